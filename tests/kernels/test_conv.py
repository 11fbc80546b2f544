"""The fused causal conv1d (+ SiLU) kernel (kernels/conv.py) against PyTorch's conv1d."""

from __future__ import annotations

import pytest
import torch

import mamba_dna.kernels as K
import mamba_dna.kernels.conv as conv
from mamba_dna.kernels.conv import causal_conv1d_cpu, causal_conv1d_ref

TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=3e-2),
}


def _inputs(batch, dim, L, Kw, bias, init, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, L, generator=g).to(dtype).requires_grad_()
    w = torch.randn(dim, Kw, generator=g).requires_grad_()
    b = torch.randn(dim, generator=g).requires_grad_() if bias else None
    s = torch.randn(batch, dim, Kw - 1, generator=g).to(dtype).requires_grad_() if init else None
    return x, w, b, s


CASES = [  # batch, dim, L, K, bias, initial_state, activation
    (1, 1, 1, 4, True, False, "silu"),  # L = 1
    (2, 5, 1, 4, True, True, "silu"),  # L = 1 with the state supplying all context
    (2, 3, 2, 4, False, True, None),  # L < K - 1
    (1, 7, 37, 4, True, False, "silu"),  # odd dim, short
    (3, 6, 150, 3, True, True, "silu"),  # crosses chunks (chunk set to 64 below)
    (2, 4, 129, 1, True, False, "silu"),  # K = 1: no left context
    (1, 5, 200, 2, False, True, None),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_forward_and_grads(case, dtype, monkeypatch):
    monkeypatch.setattr(conv, "CHUNK", 64)  # L above crosses chunk edges (L = 150, 200)
    batch, dim, L, Kw, bias, init, act = case
    x, w, b, s = _inputs(batch, dim, L, Kw, bias, init, dtype)
    leaves = [t for t in (x, w, b, s) if t is not None]
    out = causal_conv1d_cpu(x, w, b, s, act)
    ref = causal_conv1d_ref(x.float(), w, b, s.float() if s is not None else None, act)
    assert out.dtype == dtype and out.shape == (batch, dim, L)
    torch.testing.assert_close(out.float(), ref, **TOL[dtype])
    gout = torch.randn(batch, dim, L, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad(out, leaves, gout.to(dtype))
    want = torch.autograd.grad(ref, leaves, gout)
    for t, a, e in zip(leaves, got, want, strict=True):
        assert a.dtype == t.dtype and a.shape == t.shape
        scale = max(1.0, float(e.abs().max()))
        torch.testing.assert_close(a.float(), e.float(), rtol=TOL[dtype]["rtol"],
                                   atol=TOL[dtype]["atol"] * scale)


def test_strided_input_and_pieces_equal_one_pass(monkeypatch):
    """x as the half of an in_proj output (strided over batch); two pieces with the carried
    K-1 inputs give the one-pass output."""
    monkeypatch.setattr(conv, "CHUNK", 32)
    g = torch.Generator().manual_seed(2)
    xz = torch.randn(3, 10, 100, generator=g)  # (batch, 2*dim, L)
    x = xz[:, :5]  # (batch, dim, L) view, not contiguous
    w, b = torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    full = causal_conv1d_cpu(x, w, b)
    torch.testing.assert_close(full, causal_conv1d_ref(x, w, b), rtol=1e-5, atol=1e-5)
    a = causal_conv1d_cpu(x[..., :61], w, b)
    c = causal_conv1d_cpu(x[..., 61:], w, b, initial_state=x[..., 58:61])
    torch.testing.assert_close(torch.cat([a, c], -1), full, rtol=0, atol=0)


def test_dispatch_and_bad_shapes(monkeypatch):
    x, w, b, _ = _inputs(1, 3, 9, 4, True, False, torch.float32)
    with torch.no_grad():
        monkeypatch.setenv("MAMBA_DNA_BACKEND", "ref")
        r = K.causal_conv1d_fn(x, w, b)
        monkeypatch.setenv("MAMBA_DNA_BACKEND", "cpu")
        c = K.causal_conv1d_fn(x, w, b)
    torch.testing.assert_close(c, r, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="weight must be"):
        causal_conv1d_cpu(x, w[:2], b)
    with pytest.raises(ValueError, match="initial_state must be"):
        causal_conv1d_cpu(x, w, b, initial_state=torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_cpu(x, w, b, activation="relu")
