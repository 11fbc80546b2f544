"""One decode step of the selective SSM in Triton (mamba_ssm's `selective_state_update`).

    state      (batch, dim, N)      updated in place (any float dtype; math in fp32)
    x, dt, z   (batch, dim)
    A          (dim, N)
    B, C       (batch, N) or (batch, G, N); channel d uses group d // (dim / G)
    D, dt_bias (dim,)
    out        (batch, dim) in x's dtype

Grid (batch, cdiv(dim, BLOCK_D)); each program holds a (BLOCK_D, N_P) state tile in
registers: dt = softplus(dt + dt_bias), h = exp2(dt A log2 e) h + dt B x, written back once,
y = sum_n C h + D x, out = y silu(z). Offsets are int64 like the scan's.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
STEP_DEFAULT = {"BLOCK_D": 16, "num_warps": 4}


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    dim, N, dpg,
    s_sb, s_sd, s_sn,
    s_xb, s_xd,
    s_tb, s_td,
    s_ad, s_an,
    s_bb, s_bg, s_bn,
    s_cb, s_cg, s_cn,
    s_zb, s_zd,
    s_ob, s_od,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, N_P: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1).to(tl.int64)
    d = blk * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # (BLOCK_D,)
    d_mask = d < dim
    g = d // dpg  # (BLOCK_D,) group of each channel
    n = tl.arange(0, N_P).to(tl.int64)  # (N_P,)
    dn_mask = d_mask[:, None] & (n < N)[None, :]  # (BLOCK_D, N_P)

    x = tl.load(x_ptr + b * s_xb + d * s_xd, mask=d_mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * s_tb + d * s_td, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # (BLOCK_D,)
    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=dn_mask, other=0.0)
    Bv = tl.load(B_ptr + b * s_bb + g[:, None] * s_bg + n[None, :] * s_bn, mask=dn_mask,
                 other=0.0).to(tl.float32)  # (BLOCK_D, N_P)
    Cv = tl.load(C_ptr + b * s_cb + g[:, None] * s_cg + n[None, :] * s_cn, mask=dn_mask,
                 other=0.0).to(tl.float32)
    s_ptrs = state_ptr + b * s_sb + d[:, None] * s_sd + n[None, :] * s_sn  # (BLOCK_D, N_P)
    h = tl.load(s_ptrs, mask=dn_mask, other=0.0).to(tl.float32)
    a = tl.exp2(dt[:, None] * A.to(tl.float32) * 1.4426950408889634)  # (BLOCK_D, N_P)
    h = a * h + (dt * x)[:, None] * Bv
    tl.store(s_ptrs, h, mask=dn_mask)
    y = tl.sum(h * Cv, axis=1)  # (BLOCK_D,)
    if HAS_D:
        y += x * tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_zb + d * s_zd, mask=d_mask, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(out_ptr + b * s_ob + d * s_od, y, mask=d_mask)


def step_configs():
    """GPU candidates (BLOCK_D x num_warps) for the decode step."""
    return [triton.Config({"BLOCK_D": bd}, num_warps=nw) for bd in (4, 16, 32, 64) for nw in (1, 2, 4)]


if INTERPRET:
    _step = _state_update_kernel
else:  # pragma: no cover - needs a GPU
    _step = triton.autotune(configs=step_configs(), key=["dim", "N"],
                            restore_value=["state_ptr"])(_state_update_kernel)


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                                  dt_softplus=False):
    """One recurrent step; updates `state` (batch, dim, N) in place, returns out (batch, dim).

    x, dt, z (batch, dim); A (dim, N); B, C (batch, N) | (batch, G, N); D, dt_bias (dim,).
    Works on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
    """
    if x.device.type != "cuda" and not INTERPRET:
        raise ValueError(
            f"selective_state_update_triton needs CUDA tensors (got {x.device.type}); "
            "set TRITON_INTERPRET=1 before importing triton to run it on the CPU"
        )
    batch, dim = x.shape
    N = A.shape[1]
    if tuple(state.shape) != (batch, dim, N):
        raise ValueError(f"state must be (batch, dim, N)={(batch, dim, N)}, got {tuple(state.shape)}")
    if dt.shape != x.shape or (z is not None and z.shape != x.shape):
        raise ValueError(f"dt and z must be (batch, dim)={(batch, dim)}")
    B3 = B.unsqueeze(1) if B.dim() == 2 else B  # (batch, G, N)
    C3 = C.unsqueeze(1) if C.dim() == 2 else C
    G = B3.shape[1]
    if C3.shape[1] != G or dim % G or B3.shape[::2] != (batch, N) or C3.shape[::2] != (batch, N):
        raise ValueError(f"B, C must be (batch, N) or (batch, G, N) with G dividing dim={dim}; "
                         f"got {tuple(B.shape)}, {tuple(C.shape)}")
    out = torch.empty_like(x)
    if batch * dim == 0:
        return out
    n_p = max(2, triton.next_power_of_2(N))
    z_ = z if z is not None else x
    args = (
        state, x, dt, A, B3, C3, D if D is not None else A, z_,
        dt_bias if dt_bias is not None else A, out,
        dim, N, dim // G,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B3.stride(), *C3.stride(),
        *z_.stride(), *out.stride(),
    )
    flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None,
                 SOFTPLUS=bool(dt_softplus), N_P=n_p)

    def grid(meta):
        return (batch, triton.cdiv(dim, meta["BLOCK_D"]))

    if INTERPRET:
        _step[grid(STEP_DEFAULT)](*args, **flags, **STEP_DEFAULT)
    else:  # pragma: no cover - needs a GPU
        _step[grid](*args, **flags)
    return out
