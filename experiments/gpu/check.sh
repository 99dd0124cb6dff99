#!/usr/bin/env bash
# The GPU check in one command: every section of experiments/gpu/check.py within 8 minutes on one
# H100/H200, one JSON (default experiments/gpu/results.json). Without CUDA it makes the dry pass.
#   bash experiments/gpu/check.sh [OUT.json] [--budget SECONDS] [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-experiments/gpu/results.json}"
# The sections share a 420 s budget; the hard stop leaves a minute for start-up and the last section.
# The JSON is rewritten after every section, so a stopped run keeps what it measured.
exec timeout --signal=TERM 480 python experiments/gpu/check.py --out "$out" "${@:2}"
