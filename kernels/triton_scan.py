"""Fused selective scan in Triton: forward, backward, launchers and autograd.Function.

Shapes (mamba_ssm's layout, see kernels/reference.py for the recurrence):

    u, delta, z      (batch, dim, L)        fp32 / fp16 / bf16, any strides
    A                (dim, N)               real
    B, C             (batch, N, L) or (batch, G, N, L)
    D, delta_bias    (dim,)
    initial_state    (batch, dim, N)        state before position 0
    seq_idx          (batch, L) int         the state resets to 0 where the id changes
    out              (batch, dim, L) in u's dtype; last_state (batch, dim, N) fp32

Design
------
* Grid: one program per (batch, group, block of BLOCK_D channels of that group). Every
  program loads its group's B/C chunk tile once and broadcasts it over its channels; a block
  never straddles two groups, so the dim-reductions of dB/dC stay inside one group.
* State tile (BLOCK_D, N_P) in registers; L is walked in chunks of CHUNK positions. Inside a
  chunk everything is a (BLOCK_D, CHUNK, N_P) tile: the discretisation
  a = exp2(dt * A * log2 e), b = dt * B * u, then a PARALLEL associative scan over the
  chunk's positions with the combine (a1, b1), (a2, b2) -> (a1 a2, a2 b1 + b2); the running
  state h_prev enters as h = A_cum * h_prev + B_cum. The C contraction, D skip, SiLU(z) gate,
  delta_bias and softplus are fused; only the state at each chunk boundary goes to HBM
  (batch, dim, n_chunks + 1, N) fp32 -- the last one is `last_state`.
* Backward walks the chunks in reverse, recomputes the chunk's states from the saved
  boundary state (the same forward scan), and runs a REVERSE associative scan for the
  adjoint G_t = C_t dy_t + a_{t+1} G_{t+1}; a_{t+1} is recomputed from delta at t + 1
  (one extra exp2 per element instead of a shuffle through shared memory). With
  a_t h_{t-1} = h_t - b_t no shifted state is needed. dA, dB, dC, dD, d delta_bias are
  reductions over channels or batch: each program writes its partial sums to its own slot
  of a partial buffer that a torch sum reduces afterwards (deterministic, no atomics). The
  dB/dC partial buffer holds one (N, L) slot per channel block; past PARTIAL_MAX_BYTES
  (long L, many blocks) dB/dC switch to fp32 atomics into one slot per (batch, group),
  as mamba_ssm's CUDA kernel always does.
* All pointer offsets are int64: program ids, channel and position indices are cast to
  tl.int64 before they meet a stride (mamba_ssm's int32 offsets overflow past 2^31
  elements, its issues #884 and #1015). tests/kernels/test_triton_compile.py checks the
  compiled TTIR for it.
* Autotuning (GPU only): forward tunes BLOCK_D x num_warps over a list pruned by tile size;
  backward tunes num_warps (its BLOCK_D sizes the partial buffer, so the launcher fixes
  it). CHUNK is chosen by the launcher and shared by forward and backward, because the saved
  boundary states depend on it. Under TRITON_INTERPRET=1 a single fixed config runs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Defaults: what the interpreter runs and what the compile test checks for sm_80 / sm_90.
DEFAULT_CHUNK = 64
FWD_DEFAULT = {"BLOCK_D": 4, "num_warps": 4}
# Upper bound on elements of a (BLOCK_D, CHUNK, N_P) tile, per kernel (register budget).
FWD_TILE_MAX = 8192
BWD_TILE_TARGET = 2048
# dB/dC partial buffers (one (N, L) slot per channel block) larger than this switch to fp32
# atomics into one slot per (batch, group): deterministic when it fits, bounded memory when not.
PARTIAL_MAX_BYTES = 1 << 30


# ----------------------------------------------------------------------------- helpers


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose two affine maps h -> a h + b: first (a1, b1), then (a2, b2)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # torch's softplus with threshold 20; the unselected branch may be inf, never NaN.
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


# ----------------------------------------------------------------------------- forward


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr, seq_ptr,
    out_ptr, states_ptr,
    L, N, dpg, G, n_chunks,
    s_ub, s_ud, s_ul,
    s_db, s_dd, s_dl,
    s_ad, s_an,
    s_bb, s_bg, s_bn, s_bl,
    s_cb, s_cg, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_ob, s_od, s_ol,
    s_hb, s_hd, s_hn,
    s_qb, s_ql,
    s_sb, s_sd, s_sc, s_sn,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, N_P: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n_dblk = tl.cdiv(dpg, BLOCK_D)
    blk = pid % n_dblk
    g = (pid // n_dblk) % G
    b = pid // (n_dblk * G)
    d_in = blk * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # (BLOCK_D,) within group
    d_mask = d_in < dpg
    d = g * dpg + d_in  # (BLOCK_D,) channel index
    n = tl.arange(0, N_P).to(tl.int64)  # (N_P,)
    n_mask = n < N
    dn_mask = d_mask[:, None] & n_mask[None, :]  # (BLOCK_D, N_P)
    tt = tl.arange(0, CHUNK)  # (CHUNK,) position within a chunk

    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=dn_mask, other=0.0)
    A2 = A.to(tl.float32)[:, None, :] * 1.4426950408889634  # (BLOCK_D, 1, N_P), log2 e folded in
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)  # (BLOCK_D,)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)  # (BLOCK_D,)

    st_base = states_ptr + b * s_sb + d[:, None] * s_sd + n[None, :] * s_sn  # (BLOCK_D, N_P)
    if HAS_H0:
        h = tl.load(h0_ptr + b * s_hb + d[:, None] * s_hd + n[None, :] * s_hn,
                    mask=dn_mask, other=0.0).to(tl.float32)  # (BLOCK_D, N_P)
    else:
        h = tl.zeros((BLOCK_D, N_P), dtype=tl.float32)
    tl.store(st_base, h, mask=dn_mask)  # boundary state 0 = initial state

    u_base = u_ptr + b * s_ub + d[:, None] * s_ud
    dl_base = delta_ptr + b * s_db + d[:, None] * s_dd
    B_base = B_ptr + b * s_bb + g * s_bg + n[None, :] * s_bn
    C_base = C_ptr + b * s_cb + g * s_cg + n[None, :] * s_cn
    for c32 in range(0, n_chunks):
        c = pid * 0 + c32  # int64 chunk index (a Python int under the interpreter)
        t = c * CHUNK + tt  # (CHUNK,) int64 positions
        t_mask = t < L
        dt_mask = d_mask[:, None] & t_mask[None, :]  # (BLOCK_D, CHUNK)
        tn_mask = t_mask[:, None] & n_mask[None, :]  # (CHUNK, N_P)
        u = tl.load(u_base + t[None, :] * s_ul, mask=dt_mask, other=0.0).to(tl.float32)
        dt = tl.load(dl_base + t[None, :] * s_dl, mask=dt_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)  # (BLOCK_D, CHUNK)
        Bt = tl.load(B_base + t[:, None] * s_bl, mask=tn_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + t[:, None] * s_cl, mask=tn_mask, other=0.0).to(tl.float32)

        a = tl.exp2(dt[:, :, None] * A2)  # (BLOCK_D, CHUNK, N_P)
        if HAS_SEQ:
            q_cur = tl.load(seq_ptr + b * s_qb + t * s_ql, mask=t_mask, other=0)
            q_prev = tl.load(seq_ptr + b * s_qb + (t - 1) * s_ql, mask=t_mask & (t > 0), other=0)
            keep = ((q_cur == q_prev) | (t == 0)).to(tl.float32)  # (CHUNK,)
            a = a * keep[None, :, None]
        a = tl.where(t_mask[None, :, None], a, 1.0)  # padding = identity map
        bx = (dt * u)[:, :, None] * Bt[None, :, :]  # (BLOCK_D, CHUNK, N_P)
        a_cum, b_cum = tl.associative_scan((a, bx), 1, _combine)
        hs = a_cum * h[:, None, :] + b_cum  # (BLOCK_D, CHUNK, N_P) states in the chunk
        y = tl.sum(hs * Ct[None, :, :], axis=2)  # (BLOCK_D, CHUNK)
        # The last column is the state after the last valid position (padding is identity).
        h = tl.sum(tl.where((tt == CHUNK - 1)[None, :, None], hs, 0.0), axis=1)  # (BLOCK_D, N_P)
        tl.store(st_base + (c + 1) * s_sc, h, mask=dn_mask)

        if HAS_D:
            y = y + Dv[:, None] * u
        if HAS_Z:
            zv = tl.load(z_ptr + b * s_zb + d[:, None] * s_zd + t[None, :] * s_zl,
                         mask=dt_mask, other=0.0).to(tl.float32)
            y = y * zv * tl.sigmoid(zv)
        tl.store(out_ptr + b * s_ob + d[:, None] * s_od + t[None, :] * s_ol, y, mask=dt_mask)


# ----------------------------------------------------------------------------- backward


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr,
    states_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dh0_ptr,
    dA_part, dB_part, dC_part, dD_part, dbias_part,
    L, N, dpg, G, n_chunks,
    s_ub, s_ud, s_ul,
    s_db, s_dd, s_dl,
    s_ad, s_an,
    s_bb, s_bg, s_bn, s_bl,
    s_cb, s_cg, s_cn, s_cl,
    s_zb, s_zd, s_zl,
    s_qb, s_ql,
    s_sb, s_sd, s_sc, s_sn,
    s_gb, s_gd, s_gl,
    s_lb, s_ld, s_ln,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_H0: tl.constexpr, HAS_SEQ: tl.constexpr,
    HAS_DLAST: tl.constexpr, ATOMIC_BC: tl.constexpr,
    BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, N_P: tl.constexpr,
):
    """Reverse walk over chunks. Outputs du, ddelta, dz (batch, dim, L) contiguous; dh0
    (batch, dim, N); partials: dA/dD/dbias per batch row (batch, dim[, N]), dB/dC per
    channel block (batch, G, n_dblk, N, L), or (batch, G, 1, N, L) accumulated with fp32
    atomics when ATOMIC_BC."""
    pid = tl.program_id(0).to(tl.int64)
    n_dblk = tl.cdiv(dpg, BLOCK_D)
    blk = pid % n_dblk
    g = (pid // n_dblk) % G
    b = pid // (n_dblk * G)
    d_in = blk * BLOCK_D + tl.arange(0, BLOCK_D).to(tl.int64)  # (BLOCK_D,)
    d_mask = d_in < dpg
    d = g * dpg + d_in
    n = tl.arange(0, N_P).to(tl.int64)  # (N_P,)
    n_mask = n < N
    dn_mask = d_mask[:, None] & n_mask[None, :]  # (BLOCK_D, N_P)
    tt = tl.arange(0, CHUNK)

    A = tl.load(A_ptr + d[:, None] * s_ad + n[None, :] * s_an, mask=dn_mask, other=0.0)
    A = A.to(tl.float32)[:, None, :]  # (BLOCK_D, 1, N_P)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=d_mask, other=0.0).to(tl.float32)  # (BLOCK_D,)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)

    if HAS_DLAST:  # adjoint of the state after position L-1
        carry = tl.load(dlast_ptr + b * s_lb + d[:, None] * s_ld + n[None, :] * s_ln,
                        mask=dn_mask, other=0.0).to(tl.float32)  # (BLOCK_D, N_P)
    else:
        carry = tl.zeros((BLOCK_D, N_P), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, N_P), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dh0 = tl.zeros((BLOCK_D, N_P), dtype=tl.float32)

    u_base = u_ptr + b * s_ub + d[:, None] * s_ud
    dl_base = delta_ptr + b * s_db + d[:, None] * s_dd
    B_base = B_ptr + b * s_bb + g * s_bg + n[None, :] * s_bn
    C_base = C_ptr + b * s_cb + g * s_cg + n[None, :] * s_cn
    st_base = states_ptr + b * s_sb + d[:, None] * s_sd + n[None, :] * s_sn
    go_base = dout_ptr + b * s_gb + d[:, None] * s_gd
    # Outputs du / ddelta / dz are contiguous (batch, dim, L); partials contiguous.
    dim = dpg * G
    o_base = b * dim * L + d[:, None] * L  # (BLOCK_D, 1)
    if ATOMIC_BC:  # one (N, L) slot per (batch, group), fp32 atomics across channel blocks
        part = (b * G + g) * N * L
    else:  # this program's own (N, L) slot: deterministic
        part = ((b * G + g) * n_dblk + blk) * N * L
    for i in range(0, n_chunks):
        c = pid * 0 + (n_chunks - 1 - i)  # int64 chunk index, last to first
        t = c * CHUNK + tt  # (CHUNK,)
        t_mask = t < L
        tn = t + 1
        tn_mask = tn < L
        dt_mask = d_mask[:, None] & t_mask[None, :]  # (BLOCK_D, CHUNK)
        tnn_mask = t_mask[:, None] & n_mask[None, :]  # (CHUNK, N_P)

        u = tl.load(u_base + t[None, :] * s_ul, mask=dt_mask, other=0.0).to(tl.float32)
        draw = tl.load(dl_base + t[None, :] * s_dl, mask=dt_mask, other=0.0).to(tl.float32)
        dnraw = tl.load(dl_base + tn[None, :] * s_dl, mask=d_mask[:, None] & tn_mask[None, :],
                        other=0.0).to(tl.float32)  # delta at t + 1
        if HAS_BIAS:
            draw = draw + bias[:, None]
            dnraw = dnraw + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(draw)
            dtn = _softplus(dnraw)
        else:
            dt = draw
            dtn = dnraw
        dt = tl.where(t_mask[None, :], dt, 0.0)  # padding must not reach dA
        Bt = tl.load(B_base + t[:, None] * s_bl, mask=tnn_mask, other=0.0).to(tl.float32)
        Ct = tl.load(C_base + t[:, None] * s_cl, mask=tnn_mask, other=0.0).to(tl.float32)

        a = tl.exp2(dt[:, :, None] * A2)  # (BLOCK_D, CHUNK, N_P)
        an = tl.exp2(dtn[:, :, None] * A2)  # a at t + 1
        if HAS_SEQ:
            q_cur = tl.load(seq_ptr + b * s_qb + t * s_ql, mask=t_mask, other=0)
            q_prev = tl.load(seq_ptr + b * s_qb + (t - 1) * s_ql, mask=t_mask & (t > 0), other=0)
            q_next = tl.load(seq_ptr + b * s_qb + tn * s_ql, mask=tn_mask, other=0)
            keep = ((q_cur == q_prev) | (t == 0)).to(tl.float32)  # (CHUNK,)
            keepn = (q_next == q_cur).to(tl.float32)
            a = a * keep[None, :, None]
            an = an * keepn[None, :, None]
        a = tl.where(t_mask[None, :, None], a, 1.0)
        an = tl.where(tn_mask[None, :, None], an, 1.0)  # at L-1: the carry is d last_state
        ub = (dt * u)[:, :, None]  # (BLOCK_D, CHUNK, 1)
        bx = ub * Bt[None, :, :]  # (BLOCK_D, CHUNK, N_P)

        # Recompute the chunk's states from its saved boundary state.
        h_in = tl.load(st_base + c * s_sc, mask=dn_mask, other=0.0)  # (BLOCK_D, N_P)
        a_cum, b_cum = tl.associative_scan((a, bx), 1, _combine)
        hs = a_cum * h_in[:, None, :] + b_cum  # (BLOCK_D, CHUNK, N_P)

        dout = tl.load(go_base + t[None, :] * s_gl, mask=dt_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zv = tl.load(z_ptr + b * s_zb + d[:, None] * s_zd + t[None, :] * s_zl,
                         mask=dt_mask, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zv)
            y = tl.sum(hs * Ct[None, :, :], axis=2)  # (BLOCK_D, CHUNK)
            if HAS_D:
                y = y + Dv[:, None] * u
            dz = dout * y * sz * (1.0 + zv * (1.0 - sz))
            tl.store(dz_ptr + o_base + t[None, :], dz, mask=dt_mask)
            dy = dout * zv * sz
        else:
            dy = dout  # (BLOCK_D, CHUNK)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=1)

        # Adjoint: G_t = C_t dy_t + a_{t+1} G_{t+1}, as a reverse scan plus the carry.
        inj = dy[:, :, None] * Ct[None, :, :]  # (BLOCK_D, CHUNK, N_P)
        r_a, r_b = tl.associative_scan((an, inj), 1, _combine, reverse=True)
        Gs = r_a * carry[:, None, :] + r_b  # (BLOCK_D, CHUNK, N_P)
        first = (tt == 0)[None, :, None]
        carry = tl.sum(tl.where(first, Gs, 0.0), axis=1)  # G at the chunk's first position
        dh0 = tl.sum(tl.where(first, Gs * a, 0.0), axis=1)  # a_t G_t there: d h_{t-1}

        q = Gs * (hs - bx)  # G_t a_t h_{t-1}: (BLOCK_D, CHUNK, N_P)
        GB = tl.sum(Gs * Bt[None, :, :], axis=2)  # (BLOCK_D, CHUNK)
        ddt = tl.sum(q * A, axis=2) + GB * u  # (BLOCK_D, CHUNK)
        du = GB * dt
        if HAS_D:
            du += Dv[:, None] * dy
        dA_acc += tl.sum(q * dt[:, :, None], axis=1)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(draw)
        if HAS_BIAS:
            dbias_acc += tl.sum(tl.where(dt_mask, ddt, 0.0), axis=1)
        tl.store(du_ptr + o_base + t[None, :], du, mask=dt_mask)
        tl.store(ddelta_ptr + o_base + t[None, :], ddt, mask=dt_mask)

        dB = tl.sum(Gs * ub, axis=0)  # (CHUNK, N_P): summed over this block's channels
        dC = tl.sum(hs * dy[:, :, None], axis=0)  # (CHUNK, N_P)
        p_off = part + n[None, :] * L + t[:, None]  # (CHUNK, N_P) in the (N, L) slot
        if ATOMIC_BC:
            tl.atomic_add(dB_part + p_off, dB, mask=tnn_mask, sem="relaxed")
            tl.atomic_add(dC_part + p_off, dC, mask=tnn_mask, sem="relaxed")
        else:
            tl.store(dB_part + p_off, dB, mask=tnn_mask)
            tl.store(dC_part + p_off, dC, mask=tnn_mask)

    if HAS_H0:
        tl.store(dh0_ptr + b * dim * N + d[:, None] * N + n[None, :], dh0, mask=dn_mask)
    tl.store(dA_part + b * dim * N + d[:, None] * N + n[None, :], dA_acc, mask=dn_mask)
    if HAS_D:
        tl.store(dD_part + b * dim + d, dD_acc, mask=d_mask)
    if HAS_BIAS:
        tl.store(dbias_part + b * dim + d, dbias_acc, mask=d_mask)


# ----------------------------------------------------------------------------- autotune


def fwd_configs():
    """The forward candidates on a GPU (BLOCK_D x num_warps), before pruning."""
    return [triton.Config({"BLOCK_D": bd}, num_warps=nw) for bd in (2, 4, 8, 16) for nw in (2, 4, 8)]


def prune_fwd(configs, named_args, **kwargs):
    """Keep tiles of at most FWD_TILE_MAX elements with >= 4 elements a thread, and no
    BLOCK_D beyond the channels of a group."""
    chunk, n_p, dpg = kwargs["CHUNK"], kwargs["N_P"], named_args["dpg"]
    keep = []
    for cfg in configs:
        bd = cfg.kwargs["BLOCK_D"]
        tile = bd * chunk * n_p
        if tile > FWD_TILE_MAX or bd > max(2, triton.next_power_of_2(dpg)):
            continue
        if tile < 4 * 32 * cfg.num_warps:
            continue
        keep.append(cfg)
    return keep or [triton.Config({"BLOCK_D": 2}, num_warps=2)]


def bwd_configs():
    """The backward candidates on a GPU: num_warps only (BLOCK_D sizes the partial buffer)."""
    return [triton.Config({}, num_warps=nw) for nw in (2, 4, 8)]


def bwd_block_d(chunk: int, n_p: int, dpg: int) -> int:
    """Channels per backward program: a (BLOCK_D, CHUNK, N_P) tile of ~BWD_TILE_TARGET."""
    bd = max(1, BWD_TILE_TARGET // (chunk * n_p))
    return max(1, min(bd, triton.next_power_of_2(dpg)))


_KEY = ["dpg", "N", "G", "L"]
if INTERPRET:  # one fixed config: autotuning under the interpreter is slow and meaningless
    _scan_fwd = _scan_fwd_kernel
    _scan_bwd = _scan_bwd_kernel
else:  # pragma: no cover - needs a GPU
    _scan_fwd = triton.autotune(
        configs=fwd_configs(), key=_KEY, prune_configs_by={"early_config_prune": prune_fwd}
    )(_scan_fwd_kernel)
    _scan_bwd = triton.autotune(configs=bwd_configs(), key=_KEY)(_scan_bwd_kernel)


# ----------------------------------------------------------------------------- launchers


def _check(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx):
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got shape {tuple(u.shape)}")
    batch, dim, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    groups = []
    for name, X in (("B", B), ("C", C)):
        ok = (X.dim() == 3 and tuple(X.shape) == (batch, N, L)) or (
            X.dim() == 4 and X.shape[0] == batch and tuple(X.shape[2:]) == (N, L)
            and X.shape[1] > 0 and dim % X.shape[1] == 0
        )
        if not ok:
            raise ValueError(
                f"{name} must be (batch, N, L) or (batch, G, N, L) with G dividing dim={dim};"
                f" got {tuple(X.shape)} for batch={batch}, N={N}, L={L}"
            )
        groups.append(X.shape[1] if X.dim() == 4 else 1)
    if len(set(groups) - {1}) > 1:
        raise ValueError(f"B and C have different groups: {groups[0]} vs {groups[1]}")
    for name, X in (("D", D), ("delta_bias", delta_bias)):
        if X is not None and tuple(X.shape) != (dim,):
            raise ValueError(f"{name} must be (dim={dim},), got {tuple(X.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z {tuple(z.shape)} must match u {tuple(u.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (batch, dim, N):
        raise ValueError(f"initial_state must be (batch, dim, N)={(batch, dim, N)}, "
                         f"got {tuple(initial_state.shape)}")
    if seq_idx is not None and tuple(seq_idx.shape) != (batch, L):
        raise ValueError(f"seq_idx must be (batch, L)={(batch, L)}, got {tuple(seq_idx.shape)}")
    return max(groups)


def _as_groups(X, G):
    """(batch, N, L) or (batch, G|1, N, L) -> a (batch, G, N, L) view (group stride 0 when
    one B/C is shared by all groups)."""
    X4 = X.unsqueeze(1) if X.dim() == 3 else X
    return X4.expand(X4.shape[0], G, X4.shape[2], X4.shape[3])


def _flags(D, z, delta_bias, delta_softplus, initial_state, seq_idx, chunk, n_p):
    return dict(
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), HAS_H0=initial_state is not None,
        HAS_SEQ=seq_idx is not None, CHUNK=chunk, N_P=n_p,
    )


def scan_fwd(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
             initial_state=None, seq_idx=None, chunk=DEFAULT_CHUNK):
    """Forward launcher (no autograd).

    u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L) | (batch, G, N, L);
    D, delta_bias (dim,); initial_state (batch, dim, N); seq_idx (batch, L) int.
    Returns out (batch, dim, L) in u's dtype and the boundary states
    (batch, dim, n_chunks + 1, N) fp32 (index 0: the initial state, -1: the last state).
    """
    G = _check(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    batch, dim, L = u.shape
    N = A.shape[1]
    B4, C4 = _as_groups(B, G), _as_groups(C, G)  # (batch, G, N, L)
    dpg = dim // G
    n_p = max(2, triton.next_power_of_2(N))
    n_chunks = triton.cdiv(L, chunk)
    out = torch.empty((batch, dim, L), device=u.device, dtype=u.dtype)
    states = torch.zeros((batch, dim, n_chunks + 1, N), device=u.device, dtype=torch.float32)
    if batch * dim * N == 0:
        if initial_state is not None:
            states[:, :, :] = initial_state.float()[:, :, None]
        return out.zero_(), states
    A = A.float()
    z_ = z if z is not None else out
    h0 = initial_state if initial_state is not None else states[:, :, 0]
    sq = seq_idx if seq_idx is not None else states.new_zeros((batch, 1), dtype=torch.int32)
    args = (
        u, delta, A, B4, C4, D if D is not None else A, z_,
        delta_bias if delta_bias is not None else A, h0, sq, out, states,
        L, N, dpg, G, n_chunks,
        *u.stride(), *delta.stride(), *A.stride(), *B4.stride(), *C4.stride(),
        *z_.stride(), *out.stride(), *h0.stride(), *sq.stride(), *states.stride(),
    )
    flags = _flags(D, z, delta_bias, delta_softplus, initial_state, seq_idx, chunk, n_p)

    def grid(meta):
        return (batch * G * triton.cdiv(dpg, meta["BLOCK_D"]),)

    if INTERPRET:
        _scan_fwd[grid(FWD_DEFAULT)](*args, **flags, **FWD_DEFAULT)
    else:  # pragma: no cover - needs a GPU
        _scan_fwd[grid](*args, **flags)
    return out, states


def scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
             initial_state, seq_idx, states, chunk=DEFAULT_CHUNK,
             partial_max_bytes=None):
    """Backward launcher: dout (batch, dim, L), dlast (batch, dim, N) or None, the forward's
    inputs and its boundary states (batch, dim, n_chunks + 1, N). Returns gradients
    (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state), each in its input's
    dtype and shape (None where the input is None). dB/dC are reduced over channel blocks
    through a partial buffer when it takes at most `partial_max_bytes` (default
    PARTIAL_MAX_BYTES; bit-reproducible), else with fp32 atomics."""
    G = _check(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx)
    batch, dim, L = u.shape
    N = A.shape[1]
    B4, C4 = _as_groups(B, G), _as_groups(C, G)
    dpg = dim // G
    n_p = max(2, triton.next_power_of_2(N))
    n_chunks = triton.cdiv(L, chunk)
    bd = bwd_block_d(chunk, n_p, dpg)
    n_dblk = triton.cdiv(dpg, bd)
    dev, f32 = u.device, torch.float32
    du = torch.zeros((batch, dim, L), device=dev, dtype=f32)
    ddelta = torch.zeros_like(du)
    dz = torch.zeros_like(du) if z is not None else None
    dh0 = torch.zeros((batch, dim, N), device=dev, dtype=f32)
    dA_p = torch.zeros((batch, dim, N), device=dev, dtype=f32)
    cap = PARTIAL_MAX_BYTES if partial_max_bytes is None else partial_max_bytes
    atomic = n_dblk > 1 and 2 * 4 * batch * G * n_dblk * N * L > cap
    dB_p = torch.zeros((batch, G, 1 if atomic else n_dblk, N, L), device=dev, dtype=f32)
    dC_p = torch.zeros_like(dB_p)
    dD_p = torch.zeros((batch, dim), device=dev, dtype=f32)
    dbias_p = torch.zeros_like(dD_p)
    if batch * dim * N * L > 0:
        dout = dout if dout is not None else torch.zeros_like(du)
        A32 = A.float()
        z_ = z if z is not None else u
        sq = seq_idx if seq_idx is not None else du.new_zeros((batch, 1), dtype=torch.int32)
        dl = dlast if dlast is not None else dh0
        args = (
            u, delta, A32, B4, C4, D if D is not None else A32, z_,
            delta_bias if delta_bias is not None else A32, sq, states, dout, dl,
            du, ddelta, dz if dz is not None else du, dh0,
            dA_p, dB_p, dC_p, dD_p, dbias_p,
            L, N, dpg, G, n_chunks,
            *u.stride(), *delta.stride(), *A32.stride(), *B4.stride(), *C4.stride(),
            *z_.stride(), *sq.stride(), *states.stride(), *dout.stride(), *dl.stride(),
        )
        flags = _flags(D, z, delta_bias, delta_softplus, initial_state, seq_idx, chunk, n_p)
        flags["HAS_DLAST"] = dlast is not None
        flags["ATOMIC_BC"] = atomic
        grid = (batch * G * n_dblk,)
        if INTERPRET:
            _scan_bwd[grid](*args, **flags, BLOCK_D=bd, num_warps=4)
        else:  # pragma: no cover - needs a GPU
            _scan_bwd[grid](*args, **flags, BLOCK_D=bd)
    dB = dB_p.sum(2)  # (batch, G, N, L)
    dC = dC_p.sum(2)
    if B.dim() == 3:
        dB = dB.sum(1)  # (batch, N, L)
    elif B.shape[1] != G:
        dB = dB.sum(1, keepdim=True)
    if C.dim() == 3:
        dC = dC.sum(1)
    elif C.shape[1] != G:
        dC = dC.sum(1, keepdim=True)
    return (
        du.to(u.dtype), ddelta.to(delta.dtype), dA_p.sum(0).to(A.dtype),
        dB.to(B.dtype), dC.to(C.dtype),
        dD_p.sum(0).to(D.dtype) if D is not None else None,
        dz.to(z.dtype) if z is not None else None,
        dbias_p.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
        dh0.to(initial_state.dtype) if initial_state is not None else None,
    )


class SelectiveScanTritonFn(torch.autograd.Function):
    """Fused Triton selective scan with a fused backward that recomputes chunk states."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx,
                delta_softplus, chunk):
        out, states = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                               initial_state, seq_idx, chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx,
                              states)
        ctx.delta_softplus, ctx.chunk = delta_softplus, chunk
        ctx.set_materialize_grads(False)  # unused outputs arrive as None, not zeros
        return out, states[:, :, -1].clone()  # last state (batch, dim, N) fp32

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, h0, seq_idx, states = ctx.saved_tensors
        grads = scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias,
                         ctx.delta_softplus, h0, seq_idx, states, ctx.chunk)
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = grads
        return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, None, None, None


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False, initial_state=None,
                          seq_idx=None, chunk=DEFAULT_CHUNK):
    """mamba_ssm's `selective_scan_fn` contract on the fused Triton kernels.

    u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L) | (batch, G, N, L);
    D, delta_bias (dim,); initial_state (batch, dim, N); seq_idx (batch, L) int.
    Returns out (batch, dim, L) in u's dtype [, last_state (batch, dim, N) fp32].
    Works on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1.
    """
    if u.device.type != "cuda" and not INTERPRET:
        raise ValueError(
            f"selective_scan_triton needs CUDA tensors (got {u.device.type}); "
            "set TRITON_INTERPRET=1 before importing triton to run it on the CPU"
        )
    if chunk < 2 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two >= 2, got {chunk}")
    out, last = SelectiveScanTritonFn.apply(
        u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, delta_softplus, chunk
    )
    return (out, last) if return_last_state else out
