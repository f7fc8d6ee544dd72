#!/usr/bin/env bash
# Creates .venv and installs the project with its pinned SONAR stack, once. Sourced by main.sh and
# test.sh; a rerun with an unchanged pyproject.toml does nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.lcm-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing into $VENV (first run: about 6-8 minutes, ~8 GB)" >&2
  start=$(date +%s)
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  # One pip run resolves the whole pinned set (torch 2.9.1 + fairseq2n 0.8.1 must match).
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]"
  echo "$WANT" > "$STAMP"
  # `lcm <command> --help` then answers from a cache instead of importing torch/Lightning.
  "$VENV/bin/lcm" --build-help-cache >/dev/null \
    || echo "[setup] help cache not built; lcm <command> --help builds it on first use" >&2
  echo "[setup] done in $(( $(date +%s) - start ))s" >&2
fi

# fairseq2n loads libsndfile.so.1 at import. Use the system's if present, else the copy that the
# soundfile wheel ships, linked where the venv's libraries are searched.
if ! ldconfig -p 2>/dev/null | grep -q 'libsndfile.so.1 ' && [ ! -e "$VENV/lib/libsndfile.so.1" ]; then
  lib="$(ls "$VENV"/lib/python3*/site-packages/_soundfile_data/libsndfile*.so 2>/dev/null | head -n1)"
  if [ -z "$lib" ]; then
    echo "[setup] libsndfile not found: install it (apt-get install libsndfile1)" >&2
    exit 1
  fi
  ln -sf "$lib" "$VENV/lib/libsndfile.so.1"
fi

export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export FAIRSEQ2_CACHE_DIR="${FAIRSEQ2_CACHE_DIR:-$ROOT/.cache/fairseq2}"
