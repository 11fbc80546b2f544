"""On a CUDA GPU: the one dispatch point picks the fused Triton kernels for CUDA tensors, and
the model gives the CPU path's numbers there. Skipped without a GPU (marker `gpu`, see
tests/conftest.py); the kernels' own correctness on the GPU is tests/kernels/test_scan_triton.py,
which runs on CUDA tensors whenever a GPU is present.
"""

from __future__ import annotations

import pytest
import torch

import mamba_dna.kernels as K
from mamba_dna.kernels.reference import selective_scan_ref
from mamba_dna.model import MambaLM
from mamba_dna.tokenizer import encode

pytestmark = pytest.mark.gpu


def _inputs(batch=2, dim=67, L=1000, N=16, seed=0):
    """fp32 CPU inputs in mamba's ranges; odd dim, L not a multiple of any chunk."""
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, L, generator=g),
        delta=torch.randn(batch, dim, L, generator=g) * 0.5,
        A=-(torch.rand(dim, N, generator=g) * 2 + 0.1),
        B=torch.randn(batch, N, L, generator=g),
        C=torch.randn(batch, N, L, generator=g),
        D=torch.randn(dim, generator=g),
        z=torch.randn(batch, dim, L, generator=g),
        delta_bias=torch.randn(dim, generator=g) * 0.3,
    )


def test_selective_scan_fn_runs_triton_on_cuda_and_matches_the_reference():
    pytest.importorskip("triton")
    assert K.choose_backend("cuda")[0] == "triton"
    cpu = _inputs()
    ref, ref_last = selective_scan_ref(**cpu, delta_softplus=True, return_last_state=True)
    gpu = {k: v.cuda() for k, v in cpu.items()}
    out, last = K.selective_scan_fn(**gpu, delta_softplus=True, return_last_state=True)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    torch.testing.assert_close(out.cpu(), ref, rtol=6e-4, atol=2e-3)  # mamba_ssm's fp32 tolerances
    torch.testing.assert_close(last.cpu(), ref_last, rtol=6e-4, atol=2e-3)


def test_model_on_cuda_matches_cpu(tiny_model_dir):
    model = MambaLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.from_numpy(encode("ACGTTGCA" * 40 + "ACG").astype("int64"))[None]  # (1, 323)
    with torch.no_grad():
        want, _ = model(ids)  # (1, L, vocab) on CPU
        got, _ = model.cuda()(ids.cuda())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)
