"""Suite-wide collection order: the longest tests first.

The suite runs on two or more pytest-xdist workers (scripts/test.sh). A worker that picks up a two-minute
documentation page last keeps the whole run waiting for it while the other worker idles; starting the long
ones first lets the short ones fill in around them. The order changes nothing else: no test depends on
another having run.
"""
from __future__ import annotations

import pytest

# Node-id fragments of the tests that take a minute or more on 2 CPU cores (measured with --durations).
LONG_FIRST = (
    "test_docs.py::test_page_examples_run",
    "test_docs.py::test_readme_examples_hold_on_other_cpu_kernels",
)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not any(part in item.nodeid for part in LONG_FIRST))  # stable: others keep order


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray is importable (CI installs it; elsewhere its absence skips) and a test starts its own local
    instance: no cluster address from the environment, no auth token to set up."""
    import os

    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("ray is required in CI (pip install 'datamatters[ray]')")
        pytest.skip("ray not installed")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
