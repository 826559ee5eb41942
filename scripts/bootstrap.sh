#!/usr/bin/env bash
# Idempotent set-up of a fresh machine (Debian/Ubuntu + Python >= 3.10):
#   1. the embedded data: Debian package dataset-fashion-mnist (skipped when already there),
#   2. a virtualenv in .venv (reused),
#   3. the package with its dev extra, editable (reinstalled only when pyproject.toml changed).
# Usage: bash scripts/bootstrap.sh   (then .venv/bin/python -m csp_ablate ...)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
DATA=/usr/share/datasets/fashion-mnist
SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO=sudo

apt_install() {
  if command -v apt-get >/dev/null; then
    echo "[bootstrap] apt-get install $*"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "[bootstrap] no apt-get: install $* yourself (or pass data.root=... / data.download=true)" >&2
  fi
}

if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
  apt_install dataset-fashion-mnist
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    apt_install python3-venv
    "$PY" -m venv "$VENV"
  fi
fi

STAMP="$VENV/.csp_ablate-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "[bootstrap] pip install -e '.[dev]' (first time: torch takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q -e '.[dev]'
  touch "$STAMP"
else
  echo "[bootstrap] $VENV is up to date"
fi
