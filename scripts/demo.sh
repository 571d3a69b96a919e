#!/usr/bin/env bash
# Set everything up (once) and run the toolkit's main job on the built-in digits.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
out=${1:-$here/out}
"$venv/bin/datacheck" profile digits --json "$out/digits-profile.json"
echo "profile written to $out/digits-profile.json"
