"""The fused RMSNorm kernel (kernels/norm.py) against the PyTorch formula."""

from __future__ import annotations

import pytest
import torch

import mamba_dna.kernels as K
from mamba_dna.kernels.norm import rms_norm_cpu, rms_norm_ref

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 37, 5), (3, 300, 64), (513, 33)])
def test_matches_reference_forward_and_grads(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*shape, generator=g) * 3).to(dtype).requires_grad_()
    w = torch.randn(shape[-1], generator=g).requires_grad_()
    out = rms_norm_cpu(x, w, 1e-5)
    ref = rms_norm_ref(x.float(), w, 1e-5)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    gy = torch.randn(*shape, generator=g).to(dtype)  # the same incoming gradient for both
    gx, gw = torch.autograd.grad(out, (x, w), gy)
    ex, ew = torch.autograd.grad(ref, (x, w), gy.float())
    assert gx.dtype == dtype and gw.dtype == torch.float32
    torch.testing.assert_close(gx.float(), ex.float(), **TOL[dtype])
    # dw sums over all rows: scale the tolerance by its size
    torch.testing.assert_close(gw, ew, rtol=TOL[dtype]["rtol"],
                               atol=TOL[dtype]["atol"] * max(1.0, float(ew.abs().max())))


def test_dispatch_and_bad_weight(monkeypatch):
    x, w = torch.randn(4, 8), torch.randn(8)
    monkeypatch.setenv("MAMBA_DNA_BACKEND", "ref")
    r = K.rms_norm_fn(x, w)
    monkeypatch.setenv("MAMBA_DNA_BACKEND", "cpu")
    torch.testing.assert_close(K.rms_norm_fn(x, w), r, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm_cpu(x, torch.ones(7))
