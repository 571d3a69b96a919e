"""reports: see README.md."""
