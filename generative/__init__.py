"""generative: see README.md."""
