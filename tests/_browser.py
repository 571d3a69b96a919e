"""Opening an HTML report in Debian's headless Chromium for the browser tests (a module of its own, like
_fault_tasks: tests/ is on sys.path). CI installs chromium; elsewhere a missing browser skips the test."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]


@dataclass
class Opened:
    """The page, and what it did while open: console errors and page errors, requests, dialogs."""

    page: Any
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@contextmanager
def open_report(path: Path) -> Iterator[Opened]:
    """``path`` loaded in a fresh headless Chromium profile; the browser closes on exit."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI")
        pytest.skip("chromium not installed")
    pw = pytest.importorskip("playwright.sync_api")
    with tempfile.TemporaryDirectory() as profile, pw.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS)
        pg = browser.new_page()
        seen = Opened(pg)
        pg.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: seen.errors.append(str(e)))
        pg.on("request", lambda r: seen.requests.append(r.url))
        pg.on("dialog", lambda d: (seen.dialogs.append(d.message), d.dismiss()))
        pg.goto(Path(path).as_uri())
        try:
            yield seen
        finally:
            browser.close()
