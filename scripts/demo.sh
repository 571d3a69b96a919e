#!/usr/bin/env bash
# Set everything up (once) and run the toolkit's main job on the built-in digits.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$(bash "$here/scripts/setup.sh" | tail -n 1)
out=${1:-$here/out}
"$venv/bin/datacheck" audit digits --out "$out/audit"
echo "audit report: $out/audit/report.html (findings.csv, summary.json, profile.json beside it)"
# The main job: how much do data size and quality move the metrics, next to model choice?
# One worker process per core; re-running resumes, skipping the arms already finished.
"$venv/bin/reports" ablate --preset quick --out "$out/study"
echo "study report: $out/study/report.html (results.csv and arms/ with sample grids beside it)"
