#!/usr/bin/env bash
# Build the documentation site into site/ with MkDocs, strictly (a warning is an error) and offline: nothing
# is fetched while building, and the built pages are checked to load no script, style or font from the
# network. Uses the same environment as scripts/test.sh (set up once, keyed by pyproject.toml).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
cd "$here"
# No network while building: mkdocs-material's and mkdocstrings' optional fetchers stay off (see mkdocs.yml),
# and a proxy that does not exist makes any attempt fail loudly instead of silently succeeding.
export NO_MKDOCS_2_WARNING=1 http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 \
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
# Not --quiet: it hides warnings from strict mode's count. The log is shown only when the build fails.
log=$(mktemp)
if ! "$venv/bin/python" -m mkdocs build --strict --clean --site-dir "$here/site" >"$log" 2>&1; then
  grep -v '^INFO' "$log" >&2
  rm -f "$log"
  echo "docs: the build failed (strict: every warning above is an error)" >&2
  exit 1
fi
rm -f "$log"
"$venv/bin/python" - "$here/site" <<'PY'
"""Fail if a built page loads a script, stylesheet, font or image from the network."""
import re
import sys
from pathlib import Path

site = Path(sys.argv[1])
remote = re.compile(r"""(?:<script[^>]+src|<link[^>]+href|<img[^>]+src|<source[^>]+src)=["'](?:https?:)?//""", re.I)
css_remote = re.compile(r"""(?:url\(\s*["']?(?:https?:)?//|@import\s+["']?(?:https?:)?//)""", re.I)
bad = []
for f in site.rglob("*"):
    if f.suffix in (".html", ".css", ".js"):
        text = f.read_text(encoding="utf-8", errors="replace")
        pat = remote if f.suffix == ".html" else css_remote
        bad += [f"{f.relative_to(site)}: {m.group(0)}" for m in pat.finditer(text)]
        if f.suffix == ".html":
            bad += [f"{f.relative_to(site)}: {m.group(0)}" for m in css_remote.finditer(text)]
if bad:
    print("docs: pages load from the network:\n  " + "\n  ".join(bad[:20]), file=sys.stderr)
    sys.exit(1)
pages = sum(1 for _ in site.rglob("*.html"))
print(f"docs: built {pages} pages into {site} (strict, offline)")
PY
