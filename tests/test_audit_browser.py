"""Render report.html in headless Chromium: it loads with no console errors and no network requests,
every thumbnail decodes, and a file named like an HTML tag shows up as text (no element, no dialog).

Skipped only when Chromium (or playwright) is missing *and* the ``CI`` environment variable is unset;
in CI a missing browser is a failure.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datacheck.cli import main

HOSTILE = "<img src=x onerror=alert(1)>.png"
# A folder name cannot hold "/", so no closing tag: "<b>dogs</b>" would be two nested folders.
MARKUP_CLASS = "<svg onload=alert(2)>dogs"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

if (CHROMIUM is None or sync_playwright is None) and not os.environ.get("CI"):
    pytest.skip("chromium or playwright not installed (required when CI is set)", allow_module_level=True)


@pytest.fixture
def report(tmp_path) -> Path:
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("cats", MARKUP_CLASS):
        (root / cls).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(rng.integers(30, 255, (10, 10, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "cats" / HOSTILE)  # dark: shown as a thumbnail
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    out = tmp_path / "audit"
    assert main(["audit", str(root), "--out", str(out)]) == 0
    return out / "report.html"


def test_report_renders_in_chromium_and_escapes_file_names(report) -> None:
    assert CHROMIUM is not None, "chromium is required in CI (apt-get install chromium)"
    assert sync_playwright is not None, "playwright is required in CI (pip install playwright)"
    console, dialogs, requests, page_errors = [], [], [], []
    profile_dir = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(profile_dir, executable_path=CHROMIUM, headless=True,
                                                        args=ARGS, viewport={"width": 1100, "height": 900})
            page = ctx.new_page()
            page.on("console", lambda m: console.append((m.type, m.text)))
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_timeout(300)
            facts = page.evaluate("""() => ({
                text: document.body.innerText,
                title: document.title,
                hostileElements: document.querySelectorAll('img[src="x"], img:not([src^="data:image/png;base64,"]), svg[onload]').length,
                scripts: document.scripts.length,
                externalCss: document.querySelectorAll('link').length,
                imgs: Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]),
                summaryTop: document.querySelector('#summary').getBoundingClientRect().top,
            })""")
            ctx.close()
    finally:
        shutil.rmtree(profile_dir, ignore_errors=True)
    assert dialogs == [] and page_errors == []
    assert [c for c in console if c[0] in ("error", "warning")] == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
    assert "Audit of" in facts["title"] + facts["text"]
    assert HOSTILE in facts["text"]  # the file name is visible as text ...
    assert facts["hostileElements"] == 0  # ... and never became an element
    assert MARKUP_CLASS in facts["text"]  # a class folder named like markup is text too
    assert facts["scripts"] == 0 and facts["externalCss"] == 0
    assert facts["imgs"] and all(ok and w > 0 for ok, w, _alt in facts["imgs"]), facts["imgs"]
    assert any(alt.endswith(HOSTILE) for _ok, _w, alt in facts["imgs"])
    assert facts["summaryTop"] < 300  # the ten-second summary comes first
