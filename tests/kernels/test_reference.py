"""The reference scan is the ground truth: check it against independent formulations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mamba_dna.kernels.reference import selective_scan_ref, selective_state_update_ref


def _inputs(batch, dim, L, N, groups=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=dtype)

    bc = (batch, N, L) if groups is None else (batch, groups, N, L)
    return dict(
        u=r(batch, dim, L),
        delta=r(batch, dim, L) * 0.5,
        A=-torch.rand(dim, N, generator=g, dtype=dtype) * 2 - 0.1,
        B=r(*bc),
        C=r(*bc),
        D=r(dim),
        z=r(batch, dim, L),
        delta_bias=r(dim) * 0.3,
    )


@pytest.mark.parametrize("groups", [None, 2])
def test_reference_equals_step_by_step_update(groups):
    batch, dim, L, N = 2, 4, 9, 3
    x = _inputs(batch, dim, L, N, groups)
    h0 = torch.randn(batch, dim, N)
    out, last = selective_scan_ref(
        x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
        True, True, initial_state=h0,
    )
    state = h0.clone()
    steps = []
    for t in range(L):
        steps.append(selective_state_update_ref(
            state, x["u"][..., t], x["delta"][..., t], x["A"], x["B"][..., t], x["C"][..., t],
            x["D"], x["z"][..., t], x["delta_bias"], True,
        ))
    torch.testing.assert_close(torch.stack(steps, -1), out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-5)


def test_reference_matches_closed_form_lti():
    """Constant dt and B, C: h_t = sum_s exp(dt A)^(t-s) dt B u_s (a convolution)."""
    dim, L, N = 3, 12, 2
    u = torch.randn(1, dim, L, dtype=torch.float64)
    dt = 0.3
    A = -torch.rand(dim, N, dtype=torch.float64) - 0.2
    Bv = torch.randn(N, dtype=torch.float64)
    Cv = torch.randn(N, dtype=torch.float64)
    B = Bv[None, :, None].expand(1, N, L)
    C = Cv[None, :, None].expand(1, N, L)
    out = selective_scan_ref(u, torch.full_like(u, dt), A, B, C)
    a = torch.exp(dt * A)  # (dim, N)
    lag = torch.arange(L)[:, None] - torch.arange(L)[None, :]  # (L, L) t - s
    kern = (a[:, :, None, None] ** lag.clamp_min(0)) * (lag >= 0)  # (dim, N, L, L)
    kern = (kern * (Cv * Bv * dt)[None, :, None, None]).sum(1)  # (dim, L, L)
    expect = torch.einsum("dts,ds->dt", kern, u[0])[None]
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)


def test_reference_seq_idx_equals_separate_records():
    batch, dim, N = 1, 3, 4
    lens = [5, 1, 7]
    x = _inputs(batch, dim, sum(lens), N)
    seq = torch.repeat_interleave(torch.arange(3), torch.tensor(lens))[None]  # (1, L)
    args = (x["A"],)
    packed = selective_scan_ref(x["u"], x["delta"], *args, x["B"], x["C"], x["D"], x["z"],
                                x["delta_bias"], True, seq_idx=seq)
    t0 = 0
    for n in lens:
        sl = slice(t0, t0 + n)
        one = selective_scan_ref(x["u"][..., sl], x["delta"][..., sl], *args, x["B"][..., sl],
                                 x["C"][..., sl], x["D"], x["z"][..., sl], x["delta_bias"],
                                 True)
        torch.testing.assert_close(packed[..., sl], one, rtol=1e-6, atol=1e-6)
        t0 += n


@pytest.mark.parametrize("groups", [None, 2])
def test_reference_gradcheck_float64(groups):
    batch, dim, L, N = 1, 2, 4, 2
    x = _inputs(batch, dim, L, N, groups, dtype=torch.float64)
    h0 = torch.randn(batch, dim, N, dtype=torch.float64)
    seq = torch.tensor([[0, 0, 1, 1]])
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [x[k].clone().requires_grad_() for k in names] + [h0.requires_grad_()]

    def f(*t):
        out, last = selective_scan_ref(*t[:8], True, True, initial_state=t[8], seq_idx=seq)
        return out, last

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5)


def test_reference_softplus_and_gate_applied():
    """Changing z only rescales by silu(z); softplus of delta matches an explicit call."""
    x = _inputs(1, 2, 5, 3)
    base = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"])
    gated = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"])
    torch.testing.assert_close(gated, base * F.silu(x["z"]))
    sp = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True)
    explicit = selective_scan_ref(x["u"], F.softplus(x["delta"]), x["A"], x["B"], x["C"])
    torch.testing.assert_close(sp, explicit)
