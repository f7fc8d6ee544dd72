#!/usr/bin/env bash
# Set up (once) and run the main job on the offline default: bash scripts/main.sh [options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ROOT"
python -m lcm.demo "$@"
