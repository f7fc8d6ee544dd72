#!/usr/bin/env bash
# Set up (once) and run the whole test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
python -m pytest -q "$@"
