#!/usr/bin/env bash
# mamba-dna set-up and entry point. Two commands do everything on a fresh machine:
#   ./run.sh demo    create .venv if missing, install, run the end-to-end demo on real genomes
#   ./run.sh test    create .venv if missing, install, run the whole test suite
# Other forms: ./run.sh setup (install only), ./run.sh <any mamba-dna command ...>
set -euo pipefail
cd "$(dirname "$0")"
VENV="${MAMBA_DNA_VENV:-.venv}"
PY="${PYTHON:-python3}"

have_cuda_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV" >&2
    "$PY" -m venv "$VENV"
  fi
  local vpy="$VENV/bin/python"
  local stamp="$VENV/.mamba-dna-installed"
  # Re-install only when pyproject.toml changed since the last install.
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then return 0; fi
  if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
    if have_cuda_gpu; then
      echo "[setup] CUDA GPU found: installing torch (CUDA build)" >&2
      "$vpy" -m pip install -q "torch>=2.4"
    else
      # No GPU: a CPU build of torch, never a multi-GB CUDA build.
      # TORCH_CPU_INDEX lets a user point pip at a CPU-only wheel index.
      echo "[setup] no CUDA GPU: installing the CPU build torch==2.13.0" >&2
      if [ -n "${TORCH_CPU_INDEX:-}" ]; then
        "$vpy" -m pip install -q torch==2.13.0 --index-url "$TORCH_CPU_INDEX"
      else
        "$vpy" -m pip install -q torch==2.13.0
      fi
    fi
  else
    echo "[setup] keeping the installed torch $("$vpy" -c 'import torch; print(torch.__version__)')" >&2
  fi
  echo "[setup] installing mamba-dna (editable) and test tools" >&2
  "$vpy" -m pip install -q -e ".[test]"
  # Peers for benchmarks and the checkpoint-conversion test; optional.
  "$vpy" -m pip install -q "transformers>=4.40" "mambapy>=1.2" >/dev/null 2>&1 \
    || echo "[setup] transformers/mambapy not installed: conversion test and peer benchmarks will skip" >&2
  touch "$stamp"
}

cmd="${1:-help}"; shift || true
case "$cmd" in
  setup) setup ;;
  demo)  setup; exec "$VENV/bin/mamba-dna" demo "$@" ;;
  test)  setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;  # settings: tests/conftest.py
  help|-h|--help) sed -n '2,6p' "$0" ;;
  *)     setup; exec "$VENV/bin/mamba-dna" "$cmd" "$@" ;;
esac
