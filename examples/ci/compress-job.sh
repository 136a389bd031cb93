#!/usr/bin/env bash
# A compression job for any CI system: run a recipe, keep its outputs and reports, fail on a breached gate.
#
#   examples/ci/compress-job.sh RECIPE OUT [compress run options, e.g. --gate ppl_ratio<=1.3]
#
# Writes OUT/ (the model, compression.json, recipe.yaml, report.json) and OUT.html (compress report), then
# exits with compress's own code: 0 every gate held, 3 a gate was breached (OUT and the reports are still
# written: upload them either way), 2 bad input, 1 an internal error. Needs `compress` on PATH.
set -uo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 RECIPE OUT [compress run options]" >&2
  exit 2
fi
recipe=$1
out=$2
shift 2
compress run "$recipe" --out "$out" "$@"
status=$?
if [ -f "$out/report.json" ]; then
  if ! compress report "$out" --out "$out.html" && [ "$status" -eq 0 ]; then
    status=1
  fi
fi
exit "$status"
