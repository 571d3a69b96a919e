"""Take the documentation's report screenshots with headless Chromium (Debian's, via Playwright).

    python scripts/screenshots.py PAGE.html OUT.png [--width 1100] [--height 1400] [--selector CSS]

The page is opened from disk with the network blocked (the reports are self-contained, so nothing is
lost); the screenshot is the top ``--height`` pixels, or the element ``--selector`` names. Used to
refresh docs/img/: the tutorial's pictures from its run (docs/tutorial.md, "Refreshing this page's
pictures"); audit-report.png and study-report.png from `bash scripts/demo.sh`'s out/audit/report.html and
out/study/report.html (--height 1100 and 1500).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path


def shoot(page_path: Path, out: Path, width: int = 1100, height: int = 1400, selector: str | None = None) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        raise SystemExit("screenshots: Debian's chromium is needed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True,
                                                    viewport={"width": width, "height": height},
                                                    args=["--no-sandbox"])
        ctx.route("http://*/**", lambda route: route.abort())
        ctx.route("https://*/**", lambda route: route.abort())
        page = ctx.new_page()
        page.goto(page_path.resolve().as_uri())
        tmp = out.with_suffix(".tmp.png")
        if selector:
            page.locator(selector).first.screenshot(path=str(tmp))
        else:
            page.screenshot(path=str(tmp), clip={"x": 0, "y": 0, "width": width, "height": height})
        ctx.close()
        os.replace(tmp, out)  # atomic: a killed run never leaves half a picture


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1100)
    ap.add_argument("--height", type=int, default=1400)
    ap.add_argument("--selector", default=None)
    args = ap.parse_args(argv)
    shoot(args.page, args.out, args.width, args.height, args.selector)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
