"""The fast CPU scan (kernels/cpu.py) against the sequential reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mamba_dna.kernels as K
from mamba_dna.kernels.cpu import selective_scan_cpu
from mamba_dna.kernels.reference import selective_scan_ref

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
TOL = {  # mamba_ssm's tolerances by dtype
    torch.float32: dict(rtol=6e-4, atol=2e-3),
    torch.bfloat16: dict(rtol=3e-2, atol=5e-2),
    torch.float16: dict(rtol=3e-3, atol=5e-3),
}


def make(batch, dim, L, N, groups=None, full=True, dtype=torch.float32, seed=0):
    """Inputs as leaves that require grad; optional ones are None when not `full`."""
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(dtype)

    bc = (batch, N, L) if groups is None else (batch, groups, N, L)
    x = dict(
        u=r(batch, dim, L),
        delta=r(batch, dim, L, scale=0.5) if full else torch.rand(batch, dim, L, generator=g).to(dtype),
        A=-(torch.rand(dim, N, generator=g) * 3 + 0.05),  # fp32 parameter
        B=r(*bc),
        C=r(*bc),
        D=r(dim) if full else None,
        z=r(batch, dim, L) if full else None,
        delta_bias=r(dim, scale=0.3) if full else None,
        initial_state=torch.randn(batch, dim, N, generator=g) if full else None,
    )
    seq = None
    if full and L > 3:
        cuts = torch.sort(torch.randint(1, L, (batch, 2), generator=g), dim=1).values
        seq = (torch.arange(L)[None, :, None] >= cuts[:, None, :]).sum(-1)  # (batch, L)
    for v in x.values():
        if v is not None:
            v.requires_grad_()
    return x, seq


def run(fn, x, seq, softplus, **kw):
    return fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"],
              softplus, True, initial_state=x["initial_state"], seq_idx=seq, **kw)


def grads(out, last, x, seed=1):
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g).to(out.dtype)
    gl = torch.randn(last.shape, generator=g)
    leaves = [x[k] for k in NAMES if x[k] is not None]
    gs = torch.autograd.grad((out.float() * go.float()).sum() + (last * gl).sum(), leaves)
    return dict(zip([k for k in NAMES if x[k] is not None], gs, strict=True))


def check(a, b, tol, what):
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    torch.testing.assert_close(a.float(), b.float(), **tol, msg=lambda m: f"{what}: {m}")


CASES = [
    # batch, dim, L, N, groups, chunk, span
    pytest.param(1, 1, 1, 1, None, 256, None, id="L1-N1"),
    pytest.param(2, 5, 37, 4, None, 8, 16, id="odd-dim-ragged-chunks-spans"),
    pytest.param(2, 6, 50, 16, 2, 16, 32, id="groups2-N16"),
    pytest.param(1, 3, 70, 4, 1, 64, None, id="groups1-4d"),
    pytest.param(3, 2, 9, 16, None, 4, 4, id="batch3-span-eq-chunk"),
]


@pytest.mark.parametrize("batch,dim,L,N,groups,chunk,span", CASES)
@pytest.mark.parametrize("full", [True, False], ids=["D-z-bias-softplus-h0-seq", "bare"])
def test_cpu_matches_reference_fp32(batch, dim, L, N, groups, chunk, span, full):
    x, seq = make(batch, dim, L, N, groups, full)
    out, last = run(selective_scan_cpu, x, seq, full, chunk=chunk, span=span)
    out_r, last_r = run(selective_scan_ref, x, seq, full)
    tol = TOL[torch.float32]
    check(out, out_r, tol, "out")
    check(last, last_r, tol, "last_state")
    g, g_r = grads(out, last, x), grads(out_r, last_r, x)
    assert set(g) == set(g_r)
    for k in g:
        check(g[k], g_r[k], tol, f"grad {k}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_matches_reference_16bit(dtype):
    x, seq = make(2, 4, 45, 8, 2, True, dtype=dtype)
    out, last = run(selective_scan_cpu, x, seq, True, chunk=16)
    out_r, last_r = run(selective_scan_ref, x, seq, True)
    assert out.dtype == dtype and last.dtype == torch.float32
    check(out, out_r, TOL[dtype], "out")
    check(last, last_r, TOL[dtype], "last_state")
    g, g_r = grads(out, last, x), grads(out_r, last_r, x)
    for k in g:
        assert g[k].dtype == x[k].dtype, k
        check(g[k], g_r[k], TOL[dtype], f"grad {k}")


def test_cpu_bf16_error_within_twice_torch_own():
    """flash-attn's rule: vs an fp32 reference, error <= 2x the reference-in-bf16 error."""
    x, seq = make(1, 8, 64, 16, None, True, dtype=torch.float32)
    x16 = {k: (None if v is None else v.detach().to(torch.bfloat16)) for k, v in x.items()}
    x16["A"] = x["A"].detach()
    with torch.no_grad():
        exact = run(selective_scan_ref, {k: (None if v is None else v.double()) for k, v in
                                         x16.items()}, seq, True)[0]
        ours = run(selective_scan_cpu, x16, seq, True)[0].double()
        # the reference fed bf16 and kept in bf16 between ops: its own rounding error
        theirs = run(selective_scan_ref, x16, seq, True)[0].double()
    err, err_ref = (ours - exact).abs().max(), (theirs - exact).abs().max()
    assert err <= 2 * err_ref + 1e-6, (err, err_ref)


def test_streaming_pieces_equal_one_pass():
    """A long sequence in pieces with the state carried == one pass, values and grads."""
    x, _ = make(1, 4, 100, 16, None, True)
    out1, last1 = run(selective_scan_cpu, x, None, True, chunk=8)
    g1 = grads(out1, last1, x)
    outs, h = [], x["initial_state"]
    for a, b in [(0, 37), (37, 38), (38, 64), (64, 100)]:
        o, h = selective_scan_cpu(
            x["u"][..., a:b], x["delta"][..., a:b], x["A"], x["B"][..., a:b],
            x["C"][..., a:b], x["D"], x["z"][..., a:b], x["delta_bias"], True, True,
            initial_state=h, chunk=8,
        )
        outs.append(o)
    out2 = torch.cat(outs, -1)
    tol = dict(rtol=1e-5, atol=1e-5)
    check(out2, out1, tol, "out")
    check(h, last1, tol, "last")
    g2 = grads(out2, h, x)
    for k in g1:
        check(g2[k], g1[k], tol, f"grad {k}")


def test_packed_records_equal_separate_runs():
    x, _ = make(1, 3, 40, 4, None, True)
    seq = torch.repeat_interleave(torch.arange(3), torch.tensor([13, 1, 26]))[None]
    with torch.no_grad():
        packed = run(selective_scan_cpu, x, seq, True, chunk=8)[0]
        t0 = 0
        for i, n in enumerate([13, 1, 26]):
            sl = slice(t0, t0 + n)
            one = selective_scan_cpu(
                x["u"][..., sl], x["delta"][..., sl], x["A"], x["B"][..., sl],
                x["C"][..., sl], x["D"], x["z"][..., sl], x["delta_bias"], True,
                initial_state=x["initial_state"] if i == 0 else None, chunk=8,
            )
            torch.testing.assert_close(packed[..., sl], one, rtol=1e-6, atol=1e-6)
            t0 += n


def test_no_grad_path_and_noncontiguous_inputs():
    x, seq = make(2, 6, 33, 4, None, True)
    with torch.no_grad():
        out_a, last_a = run(selective_scan_cpu, x, seq, True, chunk=8)
        xt = dict(x)
        # delta as a transposed view, B as a non-contiguous slice
        xt["delta"] = x["delta"].transpose(1, 2).contiguous().transpose(1, 2)
        xt["B"] = torch.stack([x["B"], x["B"]], -1)[..., 0]
        out_b, last_b = run(selective_scan_cpu, xt, seq, True, chunk=100)
    assert not xt["delta"].is_contiguous() and not xt["B"].is_contiguous()
    torch.testing.assert_close(out_a, out_b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(last_a, last_b, rtol=1e-6, atol=1e-6)
    out_c, _ = run(selective_scan_cpu, x, seq, True, chunk=8)  # with grad
    torch.testing.assert_close(out_c.detach(), out_a)


def test_bad_shapes_raise():
    x, _ = make(1, 4, 10, 4, None, False)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan_cpu(x["u"], x["delta"], x["A"], x["B"][:, :3], x["C"])
    with pytest.raises(ValueError, match="multiple of groups"):
        selective_scan_cpu(x["u"], x["delta"], x["A"], torch.randn(1, 3, 4, 10),
                           torch.randn(1, 3, 4, 10))
    with pytest.raises(ValueError, match="initial_state"):
        selective_scan_cpu(x["u"], x["delta"], x["A"], x["B"], x["C"],
                           initial_state=torch.zeros(1, 4, 5))


@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_dispatch_env_forces_backend(monkeypatch, backend):
    import mamba_dna.kernels.cpu as cpu_mod

    calls = []
    real = cpu_mod.selective_scan_cpu

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cpu_mod, "selective_scan_cpu", spy)
    monkeypatch.setenv("MAMBA_DNA_BACKEND", backend)
    x, seq = make(1, 3, 12, 4, None, True)
    out = K.selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                              x["delta_bias"], True, False, initial_state=x["initial_state"],
                              seq_idx=seq)
    assert len(calls) == (backend == "cpu")
    ref = run(selective_scan_ref, x, seq, True)[0]
    torch.testing.assert_close(out, ref, **TOL[torch.float32])


_MEM_CHILD = textwrap.dedent("""
    import json, sys, torch
    from mamba_dna.kernels.cpu import selective_scan_cpu
    dim, L, N = {dim}, {L}, {N}
    def mk(L):
        g = torch.Generator().manual_seed(0)
        t = [torch.randn(1, dim, L, generator=g), torch.rand(1, dim, L, generator=g) * 0.1,
             -torch.rand(dim, N, generator=g) - 0.1, torch.randn(1, N, L, generator=g),
             torch.randn(1, N, L, generator=g), torch.randn(dim, generator=g),
             torch.randn(1, dim, L, generator=g)]
        return [x.requires_grad_() for x in t]
    def go(t):
        out = selective_scan_cpu(*t, None, True)
        out.backward(torch.ones_like(out))
    go(mk(64))  # compile / load the kernels first
    t = mk(L)
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS
    before = status("VmRSS:")
    go(t)
    print(json.dumps(dict(delta=status("VmHWM:") - before)))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cpu_memory_is_not_L_times_N_per_channel():
    """Peak RSS of fwd+bwd stays far below one (dim, L, N) float32 tensor."""
    dim, L, N = 32, 1 << 17, 32
    code = _MEM_CHILD.format(dim=dim, L=L, N=N)
    env = dict(os.environ, NUMBA_NUM_THREADS="2", OMP_NUM_THREADS="2")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    if res.returncode and "clear_refs" in res.stderr:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    assert res.returncode == 0, res.stderr[-2000:]
    delta = json.loads(res.stdout.strip().splitlines()[-1])["delta"]
    print(f"peak RSS delta {delta / 2**20:.0f} MiB")
    f32 = 4
    per_channel_LN = dim * L * N * f32  # 512 MiB: what an O(L*N)-per-channel path allocates
    # what the call must create: out, grad_out, grads of u, delta, z (dim*L) and B, C (N*L)
    created = (5 * dim * L + 2 * N * L) * f32  # 112 MiB
    assert delta < created + per_channel_LN // 4, (delta / 2**20, created / 2**20)


def _vm_flags(addr: int) -> list[str]:
    """VmFlags of the mapping of this process that holds `addr` (Linux /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _inside_2m(t: torch.Tensor) -> int:
    """The first 2 MiB-aligned address inside t's memory."""
    return (t.data_ptr() + (2 << 20) - 1) & ~((2 << 20) - 1)


def _thp_available() -> bool:
    return os.path.exists(THP) and "[never]" not in open(THP).read()


@pytest.mark.skipif(not _thp_available(), reason="needs Linux with transparent huge pages")
def test_large_outputs_ask_for_huge_pages(monkeypatch):
    import mamba_dna.kernels.cpu as cpu

    monkeypatch.setattr(cpu, "_HUGE", True)  # the default unless MAMBA_DNA_HUGEPAGES=0
    t = cpu._empty(1, 512, 16384)  # 32 MiB, what the backward returns at dim 512, L 16k
    assert t.shape == (1, 512, 16384) and t.dtype == torch.float32
    assert "hg" in _vm_flags(_inside_2m(t))  # MADV_HUGEPAGE took effect on the tensor's pages
    del t
    monkeypatch.setattr(cpu, "_HUGE", False)
    t = cpu._empty(1, 512, 16384)
    assert "hg" not in _vm_flags(_inside_2m(t))  # and only because we asked
    small = cpu._empty(3, 5)
    assert small.shape == (3, 5)


def test_in_kernel_exp_is_within_one_ulp():
    """The kernels' vectorised float32 exp against float64 exp over its whole range."""
    import numpy as np
    from numba import njit

    from mamba_dna.kernels._numba import vexp as kernel_vexp

    @njit
    def vexp(x, out, bits):
        kernel_vexp(x, out, bits, x.shape[0])

    x = np.concatenate([np.linspace(-87.0, 88.0, 1_000_001), np.linspace(-1.0, 1.0, 200_001),
                        np.linspace(-0.35, 0.35, 100_001)]).astype(np.float32)
    out = np.empty_like(x)
    vexp(x, out, np.empty(x.shape[0], np.int32))
    ref = np.exp(x.astype(np.float64))
    ulp = np.abs(out - ref) / np.spacing(ref.astype(np.float32)).astype(np.float64)
    assert ulp.max() <= 1.0, f"max error {ulp.max():.2f} ulp at x = {x[ulp.argmax()]}"
    # the edges: below -87.33 the argument is clamped (exp there is about the smallest normal
    # float32, 1.18e-38; the true value would be denormal), NaN stays NaN
    edge = np.array([-100.0, -87.4, np.nan, 0.0], np.float32)
    eo = np.empty_like(edge)
    vexp(edge, eo, np.empty(4, np.int32))
    assert 0 < eo[0] == eo[1] < 1.2e-38 and np.isnan(eo[2]) and eo[3] == 1
