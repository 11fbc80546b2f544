"""Test-wide settings and fixtures: plain `pytest` runs what `./run.sh test` runs.

Settings, made here because they must precede the first import of torch, numba or triton
(pytest loads this file before any test module):

* OMP_WAIT_POLICY=PASSIVE (see mamba_dna/__init__.py: torch's and numba's OpenMP pools
  would otherwise spin and starve each other).
* TRITON_INTERPRET=1 when there is no CUDA GPU: the Triton kernels then run in Triton's
  interpreter on CPU tensors, against the reference (tests/kernels/test_scan_triton.py).
  Triton reads it when a kernel is defined, so it cannot wait for a test module. A value
  the user set wins (TRITON_INTERPRET=0 skips those tests on a CPU-only machine).

Fixtures: `shared_data` (the real data of ../shared/data, or $MAMBA_DNA_DATA; the test skips
when it is absent), `tiny_model_dir` (a small random MambaLM saved with save_pretrained).
Marker `gpu`: the test needs a CUDA GPU and is skipped without one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402  (after OMP_WAIT_POLICY; does not import triton)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The real-data folder ($MAMBA_DNA_DATA, else ../shared/data beside the checkout), or
    None when it is not there. A plain function for module-level `skipif` marks; tests use
    the `shared_data` fixture."""
    env = os.environ.get("MAMBA_DNA_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (see `shared_data_dir`); skips the test when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data absent: ../shared/data or $MAMBA_DNA_DATA")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small random MambaLM (d_model 16, 2 blocks, d_state 4; seed 0) saved with
    `save_pretrained`: a model directory as `mamba-dna pretrain` writes one. Session-wide:
    tests must not modify it (copy it first)."""
    from mamba_dna.model import MambaConfig, MambaLM

    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=4)).save_pretrained(
        tmp_path_factory.mktemp("tiny_model") / "model")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
