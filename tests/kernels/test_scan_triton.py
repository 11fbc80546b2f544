"""Fused Triton selective scan and decode step vs the sequential reference.

Runs on a CUDA GPU, else under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py sets it
when there is no GPU). Small grids: the interpreter costs ~15 ms per program instance and the
associative scan is interpreted element by element, so shapes are tiny but irregular, and a
chunk of 16 makes every multi-chunk path run.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip(
        "Triton kernels need a CUDA GPU or TRITON_INTERPRET=1 set before triton is imported "
        "(tests/conftest.py sets it unless TRITON_INTERPRET is already set)",
        allow_module_level=True,
    )

from mamba_dna.kernels.reference import (  # noqa: E402
    selective_scan_ref,
    selective_state_update_ref,
)
from mamba_dna.kernels.triton_scan import (  # noqa: E402
    DEFAULT_CHUNK,
    selective_scan_triton,
)
from mamba_dna.kernels.triton_step import selective_state_update_triton  # noqa: E402

DEV = "cuda" if (torch.cuda.is_available() and not INTERPRET) else "cpu"
TOL = {torch.float32: (6e-4, 2e-3), torch.bfloat16: (3e-2, 5e-2), torch.float16: (3e-3, 5e-3)}
CHUNK = 16
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch, dim, L, N, groups, *, D=True, z=True, bias=True, h0=True, seq=False,
                dtype=torch.float32, seed=0):
    """Random inputs in mamba's ranges; groups=None gives B/C (batch, N, L)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEV)

    u = rnd(batch, dim, L).to(dtype)
    delta = rnd(batch, dim, L, scale=0.5).to(dtype)
    A = -(torch.rand(dim, N, generator=g) * 2 + 0.1).to(DEV)  # (dim, N), negative
    shp = (batch, N, L) if groups is None else (batch, groups, N, L)
    B, C = rnd(*shp).to(dtype), rnd(*shp).to(dtype)
    kw = {
        "D": rnd(dim) if D else None,
        "z": rnd(batch, dim, L).to(dtype) if z else None,
        "delta_bias": rnd(dim, scale=0.3) if bias else None,
        "initial_state": rnd(batch, dim, N) if h0 else None,
    }
    if seq:  # records of random lengths packed in each row, ids increasing
        starts = (torch.rand(batch, L, generator=g) < 0.15).int()
        starts[:, CHUNK::CHUNK] = 1  # also a record starting exactly at a chunk boundary
        kw["seq_idx"] = torch.cumsum(starts, dim=1).int().to(DEV)  # (batch, L)
    return u, delta, A, B, C, kw


def check_close(name, got, want, dtype):
    rtol, atol = TOL[dtype]
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def check_results(results, dtype):
    """`run_both`'s two results agree: out, last_state and every gradient (the same ones
    present), at `dtype`'s tolerances (bf16 inputs' gradients come back in bf16, as the
    reference's do)."""
    (out, last, grads), (r_out, r_last, r_grads) = results
    check_close("out", out, r_out, dtype)
    check_close("last_state", last, r_last, dtype)
    for name, g, rg in zip(GRAD_NAMES, grads, r_grads, strict=True):
        assert (g is None) == (rg is None), name
        if g is not None:
            check_close(f"d{name}", g, rg, dtype)


def run_both(u, delta, A, B, C, kw, softplus, chunk=CHUNK, dlast=True):
    """Forward + backward through the Triton path and the reference; returns both results."""
    leaves = [u, delta, A, B, C] + [kw[k] for k in GRAD_NAMES[5:]]
    results = []
    for fn in (selective_scan_triton, selective_scan_ref):
        xs = [x.detach().clone().requires_grad_(True) if x is not None else None for x in leaves]
        ukw = dict(zip(GRAD_NAMES[5:], xs[5:], strict=True))
        extra = {"chunk": chunk} if fn is selective_scan_triton else {}
        out, last = fn(*xs[:5], **ukw, delta_softplus=softplus, return_last_state=True,
                       seq_idx=kw.get("seq_idx"), **extra)
        gen = torch.Generator().manual_seed(1)
        g_out = torch.randn(out.shape, generator=gen).to(DEV)
        g_last = torch.randn(last.shape, generator=gen).to(DEV)
        loss = (out.float() * g_out).sum() + ((last * g_last).sum() if dlast else 0.0)
        need = [x for x in xs if x is not None]
        grads = iter(torch.autograd.grad(loss, need))
        results.append((out, last, [next(grads) if x is not None else None for x in xs]))
    return results


# (batch, dim, L, N, groups, D, z, bias, softplus, h0, seq)
CASES = [
    pytest.param(2, 5, 37, 4, None, True, True, True, True, True, False, id="odd-dim-L37-N4-full"),
    pytest.param(1, 3, 1, 4, None, True, True, True, True, True, False, id="L1"),
    pytest.param(1, 4, 16, 1, None, False, False, False, False, False, False, id="N1-bare-one-chunk"),
    pytest.param(1, 6, 33, 16, 2, True, False, True, True, False, False, id="N16-groups2"),
    pytest.param(2, 4, 29, 4, 1, False, True, False, False, True, False, id="groups1-4d-no-D"),
    pytest.param(2, 5, 45, 4, None, True, True, True, True, True, True, id="seq_idx-h0"),
    pytest.param(1, 6, 40, 2, 3, True, True, False, True, False, True, id="groups3-seq"),
]


@pytest.mark.parametrize("batch,dim,L,N,groups,D,z,bias,softplus,h0,seq", CASES)
def test_scan_fp32_forward_last_state_and_all_grads(batch, dim, L, N, groups, D, z, bias,
                                                     softplus, h0, seq):
    u, delta, A, B, C, kw = make_inputs(batch, dim, L, N, groups, D=D, z=z, bias=bias, h0=h0,
                                        seq=seq)
    check_results(run_both(u, delta, A, B, C, kw, softplus), torch.float32)


def test_scan_bf16():
    u, delta, A, B, C, kw = make_inputs(2, 5, 37, 4, 1, dtype=torch.bfloat16, seq=True)
    results = run_both(u, delta, A, B, C, kw, True)
    out, last, _ = results[0]
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    check_results(results, torch.bfloat16)


def test_default_chunk_and_no_last_state_grad():
    """The default chunk (what a GPU runs) over several chunks; loss without last_state."""
    L = DEFAULT_CHUNK * 2 + 3
    u, delta, A, B, C, kw = make_inputs(1, 2, L, 4, None, h0=False)
    check_results(run_both(u, delta, A, B, C, kw, True, chunk=DEFAULT_CHUNK, dlast=False),
                  torch.float32)


def test_strided_inputs_and_chunk_independence():
    """delta/z laid out (batch, L, dim) like mamba's projections, B/C non-contiguous; the
    result must not depend on the chunk size."""
    batch, dim, L, N = 2, 4, 35, 4
    u, _, A, _, _, kw = make_inputs(batch, dim, L, N, None)
    delta = (torch.randn(batch, L, dim) * 0.5).to(DEV).transpose(1, 2)  # (batch, dim, L) view
    BC = torch.randn(batch, L, 2 * N).to(DEV)
    B = BC[..., :N].transpose(1, 2)  # (batch, N, L), stride_l = 2N
    C = BC[..., N:].transpose(1, 2)
    assert not delta.is_contiguous() and not B.is_contiguous()
    args = dict(D=kw["D"], z=kw["z"], delta_bias=kw["delta_bias"], delta_softplus=True,
                return_last_state=True)
    r_out, r_last = selective_scan_ref(u, delta, A, B, C, **args)
    for chunk in (8, 32):
        out, last = selective_scan_triton(u, delta, A, B, C, chunk=chunk, **args)
        check_close(f"out chunk={chunk}", out, r_out, torch.float32)
        check_close(f"last chunk={chunk}", last, r_last, torch.float32)


def test_streaming_equals_one_pass():
    """Two halves with initial_state = the first half's last state == one pass."""
    u, delta, A, B, C, kw = make_inputs(1, 3, 40, 4, None, h0=False)
    args = dict(D=kw["D"], z=kw["z"], delta_bias=kw["delta_bias"], delta_softplus=True,
                return_last_state=True, chunk=CHUNK)
    full, full_last = selective_scan_triton(u, delta, A, B, C, **args)
    s = 23
    a, mid = selective_scan_triton(u[..., :s], delta[..., :s], A, B[..., :s], C[..., :s],
                                   **{**args, "z": kw["z"][..., :s]})
    b, last = selective_scan_triton(u[..., s:], delta[..., s:], A, B[..., s:], C[..., s:],
                                    **{**args, "z": kw["z"][..., s:]}, initial_state=mid)
    check_close("streamed out", torch.cat([a, b], -1), full, torch.float32)
    check_close("streamed last", last, full_last, torch.float32)


def test_bad_shapes_raise():
    u, delta, A, B, C, _ = make_inputs(1, 4, 8, 4, None)
    with pytest.raises(ValueError, match="delta"):
        selective_scan_triton(u, delta[..., :7], A, B, C)
    with pytest.raises(ValueError, match="groups|G dividing"):
        selective_scan_triton(u, delta, A, B.reshape(1, 1, 4, 8).expand(1, 3, 4, 8), C)
    with pytest.raises(ValueError, match="chunk"):
        selective_scan_triton(u, delta, A, B, C, chunk=24)


# ----------------------------------------------------------------------------- decode step


@pytest.mark.parametrize("groups,dtype", [(None, torch.float32), (2, torch.float32),
                                          (None, torch.bfloat16)])
def test_decode_step_equals_scan(groups, dtype):
    """L decode steps from initial_state == the scan's outputs and last state."""
    batch, dim, L, N = 2, 6, 5, 4
    u, delta, A, B, C, kw = make_inputs(batch, dim, L, N, groups, dtype=dtype)
    r_out, r_last = selective_scan_ref(u, delta, A, B, C, D=kw["D"], z=kw["z"],
                                       delta_bias=kw["delta_bias"], delta_softplus=True,
                                       return_last_state=True, initial_state=kw["initial_state"])
    state = kw["initial_state"].clone()  # (batch, dim, N) fp32, updated in place
    outs = []
    for t in range(L):
        outs.append(selective_state_update_triton(
            state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D=kw["D"],
            z=kw["z"][..., t], dt_bias=kw["delta_bias"], dt_softplus=True))  # (batch, dim)
    check_close("step outputs", torch.stack(outs, -1), r_out, dtype)
    check_close("state after steps", state, r_last, dtype)


def test_decode_step_matches_reference_without_options():
    batch, dim, N = 3, 5, 16
    g = torch.Generator().manual_seed(3)
    state = torch.randn(batch, dim, N, generator=g).to(DEV)
    x, dt = torch.randn(batch, dim, generator=g).to(DEV), torch.rand(batch, dim, generator=g).to(DEV)
    A = -torch.rand(dim, N, generator=g).to(DEV)
    B, C = torch.randn(batch, N, generator=g).to(DEV), torch.randn(batch, N, generator=g).to(DEV)
    ref_state = state.clone()
    want = selective_state_update_ref(ref_state, x, dt, A, B, C)
    got = selective_state_update_triton(state, x, dt, A, B, C)
    check_close("out", got, want, torch.float32)
    check_close("state", state, ref_state, torch.float32)


@pytest.mark.parametrize("partial_max_bytes", [None, 0], ids=["partial-buffer", "atomics"])
def test_backward_across_channel_blocks(monkeypatch, partial_max_bytes):
    """One channel per backward program, so dB/dC/dA sum over many programs: through the
    deterministic partial buffer, and through fp32 atomics when the buffer is capped."""
    import mamba_dna.kernels.triton_scan as ts

    monkeypatch.setattr(ts, "BWD_TILE_TARGET", 1)  # BLOCK_D = 1 in the backward
    u, delta, A, B, C, kw = make_inputs(2, 6, 21, 4, 2, seq=True)
    args = (u, delta, A, B, C, kw["D"], kw["z"], kw["delta_bias"], True,
            kw["initial_state"], kw["seq_idx"])
    out, states = ts.scan_fwd(*args, chunk=CHUNK)
    g = torch.Generator().manual_seed(2)
    dout = torch.randn(out.shape, generator=g).to(DEV)
    dlast = torch.randn(states[:, :, -1].shape, generator=g).to(DEV)
    grads = ts.scan_bwd(dout, dlast, *args, states, chunk=CHUNK,
                        partial_max_bytes=partial_max_bytes)
    _, _, r_grads = run_reference_grads(u, delta, A, B, C, kw, dout, dlast)
    for name, got, want in zip(GRAD_NAMES, grads, r_grads, strict=True):
        check_close(f"d{name}", got, want, torch.float32)


def run_reference_grads(u, delta, A, B, C, kw, dout, dlast):
    leaves = [x.detach().clone().requires_grad_(True) if x is not None else None
              for x in [u, delta, A, B, C] + [kw[k] for k in GRAD_NAMES[5:]]]
    out, last = selective_scan_ref(*leaves[:5], **dict(zip(GRAD_NAMES[5:], leaves[5:], strict=True)),
                                   delta_softplus=True, return_last_state=True,
                                   seq_idx=kw["seq_idx"])
    grads = torch.autograd.grad((out * dout).sum() + (last * dlast).sum(), leaves)
    return out, last, grads
