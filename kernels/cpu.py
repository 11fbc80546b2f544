"""The fast CPU selective scan: fused numba kernels, O(batch*dim*L) memory, exact backward.

Same contract as `selective_scan_ref` (mamba_ssm's `selective_scan_fn` plus `initial_state`
and `seq_idx`); see kernels/reference.py for the shapes and the recurrence

    h_t = exp(dt_t * A) * keep_t * h_{t-1} + dt_t * B_t * u_t,   y_t = C_t . h_t + D u_t,
    out_t = y_t * silu(z_t),   keep_t = 0 where seq_idx changes (packed records), else 1.

How, each choice made by measurement (bench/scan.py; the figures are in CHANGELOG.md):

* One numba kernel per direction, parallel over channels (batch*dim), does everything a
  position needs: bias + softplus, the N exponentials (`_numba.vexp`, a vectorised float32
  exp), the recurrence, the C-contraction, the D skip and the SiLU(z) gate. Nothing of size
  L*N is materialised; per thread the working buffers are (chunk, 4, N).
* Channels go in groups of 4 (`_KG`; same batch row and B/C group) through one chunk at a
  time (`_group_states`): per-position scalars, then exp(dt*A) for the whole chunk in one
  flat vectorised pass, then the recurrence stepping the 4 channels per position: 4
  independent dependency chains the CPU overlaps, where one channel alone is bound by the
  latency of its multiply-add chain.
* The loops are written so that numba/LLVM emits vector code: (m, kk, N) C-contiguous views
  with a runtime N (a literal N fully unrolls into scalar code, since numba does not run
  LLVM's SLP vectoriser; a flat index i*N + n stays scalar too); arrays indexed by the loop
  variable only (slices, not `t0 + i`: the negative-index wraparound of an offset index
  keeps the loop scalar); one stored array per innermost loop (fused loops with several
  stores stay scalar). Sums over a group's channels (dB, dC per position) and its 4 dot
  products C.h are formed in one loop over N for all 4 channels: one store per row instead
  of 4 read-modify-writes of the same row (a store-to-load chain).
* State and every accumulation are float32, as in mamba_ssm's CUDA kernel; the per-channel
  gradient sums over L (dA, dD, d delta_bias) are carried in float64 across chunks so a
  megabase does not lose them to rounding.
* Time is cut into chunks of `chunk` positions (default 256). The forward keeps the state at
  each chunk start when a gradient is needed: (n_chunks, batch, dim, N) fp32, i.e.
  dim*L*N/chunk floats, 1/16 of one (batch, dim, L) tensor at N=16. B and C are transposed
  once to (batch, groups, L, N) so the inner loop over N reads contiguous memory.
* Backward (torch.autograd.Function) walks the chunks in reverse. Per chunk and channel
  group it recomputes the chunk's exponentials and states from the saved chunk-start
  states, exactly as the forward did (`_group_states`), then runs the adjoint recurrence
      g_t = keep_{t+1} * exp(dt_{t+1} A) * g_{t+1} + gy_t * C_t
  and forms every gradient: u, delta, A, B, C, D, z, delta_bias, initial_state. dB and dC
  are sums over the channels of a group; each thread accumulates its channels into its
  own (batch, groups, span, N) buffer (span: a multiple of chunk, <= ~1 MB per thread) and
  the buffers are added after each span, in a fixed order (deterministic for a given
  thread count). One barrier per span, none per chunk: on a busy machine barriers cost.
* The large outputs ((batch, dim, L): the forward's out, the backward's du, ddelta, dz) are
  fresh memory on every call; `_empty` asks for them on 2 MiB transparent huge pages.
* Inputs in float16/bfloat16 are converted to float32 copies first (numba has no bf16);
  outputs and gradients are returned in the inputs' dtypes. With float32 inputs no copy of
  u/delta/z is made (non-contiguous inputs are made contiguous, as mamba_ssm does).

Memory for forward+backward beyond the tensors the API takes and returns: B and C
transposed (2*batch*groups*L*N floats), the chunk-start states, and per-thread buffers.
The first call compiles the two kernels (seconds; cached on disk by numba, `cache=True`,
in kernels/__pycache__), later processes load them from the cache.
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
import torch
from numba import njit, prange

from mamba_dna.kernels._numba import FASTMATH, ONE, ZERO, ensure_threads, parts_for, vexp

__all__ = ["selective_scan_cpu", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 256
_KG = 4  # channels both kernels step together (`_group_at`, `_group_states`)

_F32 = np.float32

# ----------------------------------------------------------------------------- kernels


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _log1p_unit(y):
    """log(1 + y) for y in [0, 1], float32: 2 atanh(s), s = y / (2 + y) <= 1/3."""
    s = y / (_F32(2.0) + y)
    s2 = s * s
    q = _F32(1.0 / 15.0) * s2 + _F32(1.0 / 13.0)
    q = q * s2 + _F32(1.0 / 11.0)
    q = q * s2 + _F32(1.0 / 9.0)
    q = q * s2 + _F32(1.0 / 7.0)
    q = q * s2 + _F32(1.0 / 5.0)
    q = q * s2 + _F32(1.0 / 3.0)
    q = q * s2 + ONE
    return _F32(2.0) * s * q


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _prepass(delta, z, bias_d, b, d, t0, m, softplus, has_z, need_dsig,
             dtb, dsig, zsig, tmp, bits):
    """Per-position scalars of one channel's chunk, vectorised over positions.

    dtb[i] = softplus(delta + bias) (or delta + bias); dsig[i] = sigmoid(delta + bias)
    (softplus' derivative, when `softplus` and `need_dsig`); zsig[i] = sigmoid(z) (when
    `has_z`). Arrays are indexed by the loop variable only (views, not t0 + i: an
    offset index keeps numba's negative-index wraparound in the loop, which then stays
    scalar).
    """
    dl = delta[b, d, t0:t0 + m]  # (m,)
    if softplus:
        for i in range(m):
            tmp[i] = -abs(dl[i] + bias_d)
        vexp(tmp, tmp, bits, m)  # e = exp(-|x|) in (0, 1]
        for i in range(m):
            dtb[i] = max(dl[i] + bias_d, ZERO) + _log1p_unit(tmp[i])
        if need_dsig:
            for i in range(m):
                e = tmp[i]
                r = ONE / (ONE + e)
                dsig[i] = r if dl[i] + bias_d >= ZERO else e * r
    else:
        for i in range(m):
            dtb[i] = dl[i] + bias_d
    if has_z:
        zl = z[b, d, t0:t0 + m]  # (m,)
        for i in range(m):
            tmp[i] = -zl[i]
        vexp(tmp, tmp, bits, m)
        for i in range(m):
            zsig[i] = ONE / (ONE + tmp[i])


@njit(inline="always", error_model="numpy")
def _group_at(bd, hi, dim, per_group):
    """The channel group starting at flat channel bd (< hi, this thread's end): batch row b,
    first channel d0, B/C group g and size kk <= _KG, never crossing a row or a B/C group."""
    b = bd // dim
    d0 = bd - b * dim
    g = d0 // per_group
    return b, d0, g, min(_KG, hi - bd, (g + 1) * per_group - d0)


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _group_bufs(chunk, N):
    """The per-thread buffers of a channel group (see `_group_states`, `_bwd_group`)."""
    W = _KG * N
    return (
        np.empty(chunk * W, np.float32),  # a: exp(dt_t A) * keep_t, (m, kk, N)
        np.empty(chunk * W, np.int32),  # exponent bits for the exp
        np.empty((chunk + 1) * W, np.float32),  # h: row 0 start state, row i+1: h_t
        np.empty(chunk * W, np.float32),  # g: dLoss/dh_t (backward)
        np.empty((_KG, N), np.float32),  # dA of the chunk (backward)
        np.empty((_KG, chunk), np.float32),  # dt
        np.empty((_KG, chunk), np.float32),  # sigmoid(delta + bias) (backward)
        np.empty((_KG, chunk), np.float32),  # sigmoid(z)
        np.empty((_KG, chunk), np.float32),  # dLoss/dy_t (backward)
        np.empty((_KG, chunk), np.float32),  # dt_t * u_t
        np.empty((_KG, chunk), np.float32),  # y_t = C_t . h_t
        np.empty(chunk, np.float32),  # scratch
        np.empty(chunk, np.int32),  # scratch
    )


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _group_states(u, delta, z, B2, A, bias, keep, h0, b, d0, kk, t0, m,
                  softplus, has_z, has_keep, need_dsig, bufs):
    """The states of one chunk for channels d0 .. d0+kk-1 of batch row b (one B/C group).

    B2 (m, N): the chunk's rows of B; h0 (batch, dim, N): the states at the chunk start.
    Fills, in `bufs`: dt, dt*u, sigmoid(z) (and sigmoid(delta + bias) if `need_dsig`) per
    channel and position; a = exp(dt A) * keep as (m, kk, N); h as (m + 1, kk, N), row 0
    the start state. Returns the (a, h) views.

    Layout, chosen by measurement: (m, kk, N) C-contiguous views with a runtime N, so each
    innermost loop over N is vectorised by LLVM (numba does not run LLVM's SLP vectoriser:
    a literal N fully unrolls the loop into scalar code, and a flat index i*N + n stays
    scalar too); the exponentials go in one flat vectorised pass over m*kk*N; the
    recurrence steps kk channels per position, kk independent dependency chains the CPU
    overlaps, instead of one latency-bound chain.
    """
    a_, abits, h_, g_, gA_, dtb, dsig, zsig, gyv, dtuv, _, tmp, tbits = bufs
    N = A.shape[1]
    W = kk * N
    a3 = a_[: m * W].reshape((m, kk, N))  # (m, kk, N) exp(dt_t A) * keep_t
    h3 = h_[: (m + 1) * W].reshape((m + 1, kk, N))  # (m + 1, kk, N) h_{t0-1+i}
    for k in range(kk):
        d = d0 + k
        _prepass(delta, z, bias[d], b, d, t0, m, softplus, has_z, need_dsig,
                 dtb[k], dsig[k], zsig[k], tmp, tbits)
        Ad = A[d]  # (N,)
        ul = u[b, d, t0:t0 + m]  # (m,)
        for i in range(m):
            dtuv[k, i] = dtb[k, i] * ul[i]
        for i in range(m):
            dt = dtb[k, i]
            for n in range(N):
                a3[i, k, n] = dt * Ad[n]
    vexp(a_, a_, abits, m * W)
    if has_keep:
        for i in range(m):
            if keep[b, t0 + i] == 0:
                for k in range(kk):
                    for n in range(N):
                        a3[i, k, n] = ZERO
    for k in range(kk):
        hk = h0[b, d0 + k]  # (N,)
        for n in range(N):
            h3[0, k, n] = hk[n]
    for i in range(m):
        for k in range(kk):
            dtu = dtuv[k, i]
            for n in range(N):
                h3[i + 1, k, n] = a3[i, k, n] * h3[i, k, n] + dtu * B2[i, n]
    return a3, h3


@njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _scan_fwd_kernel(
    u, delta, z, Bt, Ct, A, D, bias, keep, state, out, saved,
    has_z, has_keep, softplus, save, chunk, n_parts,
):  # pragma: no cover - compiled
    """Forward over all of L.

    u, delta, z, out (batch, dim, L) f32; Bt, Ct (batch, G, L, N) f32; A (dim, N); D, bias
    (dim,); keep (batch, L) u8; state (batch, dim, N) f32: initial state in, last state out;
    saved (n_chunks, batch, dim, N): state at each chunk start (written when `save`);
    n_parts: blocks of channels, one per thread. Per chunk, channels go in groups of up to
    _KG (same batch row and B/C group) through `_group_states`, then C.h + D u and the gate.
    """
    batch, dim, L = u.shape
    G = Bt.shape[1]
    N = A.shape[1]
    per_group = dim // G
    n_chunks = (L + chunk - 1) // chunk
    BD = batch * dim
    for p in prange(n_parts):
        # Each thread owns a contiguous block of channels and walks the chunks itself:
        # no barrier between chunks; the chunk of B/C stays in its cache across channels.
        lo = p * BD // n_parts
        hi = (p + 1) * BD // n_parts
        bufs = _group_bufs(chunk, N)
        zsig = bufs[7]
        yv = bufs[10]  # (_KG, chunk) C.h per channel and position
        for c in range(n_chunks):
            t0 = c * chunk
            t1 = min(t0 + chunk, L)
            m = t1 - t0
            bd = lo
            while bd < hi:
                b, d0, g, kk = _group_at(bd, hi, dim, per_group)
                if save:
                    for k in range(kk):
                        sv = saved[c, b, d0 + k]  # (N,)
                        hk = state[b, d0 + k]  # (N,)
                        for n in range(N):
                            sv[n] = hk[n]
                a3, h3 = _group_states(
                    u, delta, z, Bt[b, g, t0:t1], A, bias, keep, state, b, d0, kk, t0, m,
                    softplus, has_z, has_keep, False, bufs)
                C2 = Ct[b, g, t0:t1]  # (m, N)
                if kk == _KG:  # y = C.h of the 4 channels in one loop over N per position
                    for i in range(m):
                        y0, y1, y2, y3 = ZERO, ZERO, ZERO, ZERO
                        for n in range(N):
                            cn = C2[i, n]
                            y0 += h3[i + 1, 0, n] * cn
                            y1 += h3[i + 1, 1, n] * cn
                            y2 += h3[i + 1, 2, n] * cn
                            y3 += h3[i + 1, 3, n] * cn
                        yv[0, i], yv[1, i], yv[2, i], yv[3, i] = y0, y1, y2, y3
                else:
                    for k in range(kk):
                        for i in range(m):
                            acc = ZERO
                            for n in range(N):
                                acc += h3[i + 1, k, n] * C2[i, n]
                            yv[k, i] = acc
                for k in range(kk):
                    d = d0 + k
                    hk = state[b, d]  # (N,) the last state so far
                    for n in range(N):
                        hk[n] = h3[m, k, n]
                    Dd = D[d]
                    ul = u[b, d, t0:t1]  # (m,)
                    ol = out[b, d, t0:t1]  # (m,)
                    yk = yv[k]  # (m,)
                    if has_z:
                        zl = z[b, d, t0:t1]  # (m,)
                        for i in range(m):
                            ol[i] = (yk[i] + Dd * ul[i]) * zl[i] * zsig[k, i]
                    else:
                        for i in range(m):
                            ol[i] = yk[i] + Dd * ul[i]
                bd += kk


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _bwd_group(
    ins, outs, B2, C2, A, D, bias, keep, saved_c, carry, gB2, gC2, gA64, gD64, gbias64,
    has_z, has_keep, softplus, b, d0, kk, t0, m, bufs,
):
    """One chunk of the backward for channels d0 .. d0+kk-1 of batch row b (one B/C group).

    ins: u, delta, z, gout; outs: gu, gdelta, gz (batch, dim, L); B2, C2 (m, N): this
    chunk's rows of B and C; gB2, gC2 (m, N): this thread's share of their gradients;
    saved_c (batch, dim, N): the chunk-start states; carry (batch, dim, N): dLoss/dh
    carried from the future in, to the past out; gA64 (batch, dim, N), gD64, gbias64
    (batch, dim): float64 sums over L; bufs: the per-thread buffers (`_group_bufs`).
    Same layout as `_group_states`; the adjoint recurrence also steps kk channels per
    position.
    """
    u, delta, z, gout = ins
    gu, gdelta, gz = outs
    _, _, _, g_, gA_, dtb, dsig, zsig, gyv, dtuv, yv, _, _ = bufs
    N = A.shape[1]
    # 1-2) per-position scalars, exp(dt*A) and the chunk's states from its saved start
    a3, h3 = _group_states(u, delta, z, B2, A, bias, keep, saved_c, b, d0, kk, t0, m,
                           softplus, has_z, has_keep, True, bufs)
    g3 = g_[: m * kk * N].reshape((m, kk, N))  # dLoss/dh_t
    # 3) dLoss/dy through the gate; y = C.h and dC in one pass over h (one store and the
    #    reductions: still vector code; h read once; adding the 4 channels' terms before
    #    the store avoids a store-to-load chain on the dC row, 1.9x faster alone); then dz
    for k in range(kk):
        d = d0 + k
        gol = gout[b, d, t0:t0 + m]  # (m,)
        if has_z:
            zl = z[b, d, t0:t0 + m]  # (m,)
            for i in range(m):
                gyv[k, i] = gol[i] * zl[i] * zsig[k, i]
        else:
            for i in range(m):
                gyv[k, i] = gol[i]
    if kk == _KG:  # all 4 channels in one loop over N: one store of dC per position
        for i in range(m):
            q0, q1, q2, q3 = gyv[0, i], gyv[1, i], gyv[2, i], gyv[3, i]
            y0, y1, y2, y3 = ZERO, ZERO, ZERO, ZERO
            for n in range(N):
                cn = C2[i, n]
                x0, x1, x2, x3 = h3[i + 1, 0, n], h3[i + 1, 1, n], h3[i + 1, 2, n], h3[i + 1, 3, n]
                y0 += x0 * cn
                y1 += x1 * cn
                y2 += x2 * cn
                y3 += x3 * cn
                gC2[i, n] += x0 * q0 + x1 * q1 + x2 * q2 + x3 * q3
            yv[0, i], yv[1, i], yv[2, i], yv[3, i] = y0, y1, y2, y3
    else:  # a group cut short by a row or B/C-group edge
        for i in range(m):
            for k in range(kk):
                gy = gyv[k, i]
                acc = ZERO
                for n in range(N):
                    hn = h3[i + 1, k, n]
                    acc += hn * C2[i, n]
                    gC2[i, n] += gy * hn
                yv[k, i] = acc
    if has_z:
        for k in range(kk):
            d = d0 + k
            Dd = D[d]
            gol = gout[b, d, t0:t0 + m]  # (m,)
            ul = u[b, d, t0:t0 + m]  # (m,)
            zl = z[b, d, t0:t0 + m]  # (m,)
            gzl = gz[b, d, t0:t0 + m]  # (m,)
            for i in range(m):
                sz = zsig[k, i]
                gzl[i] = gol[i] * (yv[k, i] + Dd * ul[i]) * sz * (ONE + zl[i] * (ONE - sz))
    # 4) adjoint recurrence g_t = a_{t+1} g_{t+1} + gy_t C_t, t descending
    for k in range(kk):
        gh = carry[b, d0 + k]  # (N,)
        gy = gyv[k, m - 1]
        for n in range(N):
            g3[m - 1, k, n] = gh[n] + gy * C2[m - 1, n]
    for i in range(m - 2, -1, -1):
        for k in range(kk):
            gy = gyv[k, i]
            for n in range(N):
                g3[i, k, n] = g3[i + 1, k, n] * a3[i + 1, k, n] + gy * C2[i, n]
    for k in range(kk):
        gh = carry[b, d0 + k]  # (N,)
        for n in range(N):
            gh[n] = g3[0, k, n] * a3[0, k, n]  # carried to the previous chunk
    # 5) gradients: dB (this thread's span share), then per channel dA, u, delta, D, bias
    if kk == _KG:  # as for dC: the 4 channels' terms summed before the one store
        for i in range(m):
            e0, e1, e2, e3 = dtuv[0, i], dtuv[1, i], dtuv[2, i], dtuv[3, i]
            for n in range(N):
                gB2[i, n] += g3[i, 0, n] * e0 + g3[i, 1, n] * e1 + g3[i, 2, n] * e2 + g3[i, 3, n] * e3
    else:
        for i in range(m):
            for k in range(kk):
                dtu = dtuv[k, i]
                for n in range(N):
                    gB2[i, n] += g3[i, k, n] * dtu
    for k in range(kk):
        d = d0 + k
        Ad = A[d]  # (N,)
        Dd = D[d]
        gAk = gA_[k]  # (N,)
        for n in range(N):
            gAk[n] = ZERO
        ul = u[b, d, t0:t0 + m]  # (m,)
        gul = gu[b, d, t0:t0 + m]  # (m,)
        gdl = gdelta[b, d, t0:t0 + m]  # (m,)
        gD_acc = 0.0
        gb_acc = 0.0
        for i in range(m):
            dt = dtb[k, i]
            s_bu = ZERO  # sum_n g_n B_n
            s_ga = ZERO  # sum_n g_n h_{t-1,n} a_n A_n: d/d dt through exp
            for n in range(N):
                gn = g3[i, k, n]
                ga = gn * h3[i, k, n] * a3[i, k, n]
                s_bu += gn * B2[i, n]
                s_ga += ga * Ad[n]
                gAk[n] += ga * dt
            uu = ul[i]
            gy = gyv[k, i]
            gdt = s_ga + s_bu * uu
            gul[i] = s_bu * dt + gy * Dd
            if softplus:
                gdt = gdt * dsig[k, i]
            gdl[i] = gdt
            gD_acc += gy * uu
            gb_acc += gdt
        for n in range(N):
            gA64[b, d, n] += gAk[n]
        gD64[b, d] += gD_acc
        gbias64[b, d] += gb_acc


@njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _scan_bwd_kernel(
    u, delta, z, Bt, Ct, A, D, bias, keep, saved, gout,
    gu, gdelta, gz, gBt, gCt, gA64, gD64, gbias64, carry,
    has_z, has_keep, softplus, chunk, span, n_parts,
):  # pragma: no cover - compiled
    """Backward by recomputation, chunks in reverse.

    saved (n_chunks, batch, dim, N): chunk-start states from the forward; gout (batch, dim,
    L). Writes gu, gdelta, gz (batch, dim, L), gBt, gCt (batch, G, L, N); adds into gA64
    (batch, dim, N), gD64, gbias64 (batch, dim) float64. carry (batch, dim, N): the
    gradient of the last state in, of the initial state out.

    Per chunk, channels go in groups of up to _KG (same batch row and B/C group) through
    `_bwd_group`: the chunk's exp(dt*A) in one vectorised pass, the states, the adjoint
    states, then the gradients. Threads own blocks of channels and walk `span` positions
    (a multiple of `chunk`) without synchronising; then their dB/dC shares for the span
    are added (one barrier per span, not per chunk: barriers are what a busy machine
    makes expensive).
    """
    batch, dim, L = u.shape
    G = Bt.shape[1]
    N = A.shape[1]
    per_group = dim // G
    BD = batch * dim
    n_spans = (L + span - 1) // span
    ins = (u, delta, z, gout)
    outs = (gu, gdelta, gz)
    # Per-thread shares of dB and dC for the current span: (n_parts, batch, G, span, N).
    gBp = np.zeros((n_parts, batch, G, span, N), np.float32)
    gCp = np.zeros((n_parts, batch, G, span, N), np.float32)
    RB = 64  # positions per block of the reduction
    n_blk = (span + RB - 1) // RB
    for s in range(n_spans - 1, -1, -1):
        s0 = s * span
        s1 = min(s0 + span, L)
        c_lo = s0 // chunk
        c_hi = (s1 + chunk - 1) // chunk
        for p in prange(n_parts):
            lo = p * BD // n_parts
            hi = (p + 1) * BD // n_parts
            bufs = _group_bufs(chunk, N)
            for c in range(c_hi - 1, c_lo - 1, -1):
                t0 = c * chunk
                t1 = min(t0 + chunk, L)
                m = t1 - t0
                j0 = t0 - s0  # first row of this chunk in the span
                bd = lo
                while bd < hi:
                    b, d0, g, kk = _group_at(bd, hi, dim, per_group)
                    _bwd_group(
                        ins, outs, Bt[b, g, t0:t1], Ct[b, g, t0:t1], A, D, bias, keep,
                        saved[c], carry, gBp[p, b, g, j0:j0 + m], gCp[p, b, g, j0:j0 + m],
                        gA64, gD64, gbias64, has_z, has_keep, softplus, b, d0, kk, t0, m,
                        bufs)
                    bd += kk
        # 6) add the threads' shares of dB, dC for this span (fixed order), reset them
        for r in prange(batch * G * n_blk):
            b = r // (G * n_blk)
            g = (r // n_blk) % G
            j0 = (r % n_blk) * RB
            j1 = min(j0 + RB, s1 - s0)
            for j in range(j0, j1):
                oB = gBt[b, g, s0 + j]  # (N,)
                oC = gCt[b, g, s0 + j]  # (N,)
                for n in range(N):
                    oB[n] = ZERO
                    oC[n] = ZERO
                for p in range(n_parts):
                    sB = gBp[p, b, g, j]  # (N,)
                    sC = gCp[p, b, g, j]  # (N,)
                    for n in range(N):
                        oB[n] += sB[n]
                    for n in range(N):
                        oC[n] += sC[n]
                    for n in range(N):
                        sB[n] = ZERO
                    for n in range(N):
                        sC[n] = ZERO


# ----------------------------------------------------------------------------- host side


def _f32(x: torch.Tensor) -> torch.Tensor:
    """float32, contiguous, detached: x itself when it already is, else a copy (`_empty`)."""
    return _dense(x.detach(), torch.float32)


def _dense(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as a contiguous tensor of `dtype`: x itself when it is one, else a copy in memory
    from `_empty` (huge pages when large)."""
    if x.dtype == dtype and x.is_contiguous():
        return x
    return _empty(*x.shape, dtype=dtype).copy_(x)


def _span(chunk: int, rows: int, L: int) -> int:
    """Positions between the backward's barriers: a multiple of `chunk`, with each thread's
    dB/dC share (rows = batch*groups*N floats per position, two of them) <= ~1 MB."""
    per = max(1, (1 << 17) // max(rows, 1) // chunk)
    return chunk * max(1, min(per, (L + chunk - 1) // chunk))


# Output tensors of (batch, dim, L) (and at a megabase the B/C copies and chunk states) are
# fresh memory on every call: tens of MiB, which glibc maps anew each time (they pass its
# mmap threshold), so the kernel that first writes them also takes one page fault per 4 KiB
# (8,192 for 32 MiB). Where transparent huge pages are available on request (Linux,
# /sys/kernel/mm/transparent_hugepage/enabled = madvise, the common default), `_empty` asks
# for 2 MiB pages on the aligned inside of such a tensor: 512x fewer faults. Speed only: the
# memory is the same bytes, and where the kernel refuses (THP "never", not Linux) nothing
# changes. MAMBA_DNA_HUGEPAGES=0 turns it off.
_HUGE = sys.platform.startswith("linux") and os.environ.get("MAMBA_DNA_HUGEPAGES", "1") != "0"
# glibc's largest mmap threshold: allocations this large are always freshly mapped, smaller
# ones come back from its heap after the first free (their pages are then already there).
_HUGE_MIN = 32 << 20  # bytes
_PAGE2M = 2 << 20
_MADV_HUGEPAGE = 14  # Linux <sys/mman.h>
_madvise = None
if sys.platform.startswith("linux"):
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None


def _empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torch.empty(*shape, dtype=dtype), on 2 MiB pages where the OS grants them (see above)."""
    t = torch.empty(*shape, dtype=dtype)
    n = t.numel() * t.element_size()
    if _HUGE and _madvise is not None and n >= _HUGE_MIN:
        p = t.data_ptr()
        lo = (p + _PAGE2M - 1) & ~(_PAGE2M - 1)  # 2 MiB-aligned inside of the tensor
        hi = (p + n) & ~(_PAGE2M - 1)
        if hi > lo:
            _madvise(lo, hi - lo, _MADV_HUGEPAGE)  # advice only: a refusal changes nothing
    return t


def _np(x: torch.Tensor) -> np.ndarray:
    return x.numpy()


class _Prepared:
    """Inputs converted once to the kernels' layouts (float32, contiguous, B/C as (b,G,L,N))."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, seq_idx):
        batch, dim, L = u.shape
        if A.dim() != 2 or A.shape[0] != dim:
            raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
        N = A.shape[1]
        if delta.shape != u.shape:
            raise ValueError(f"delta {tuple(delta.shape)} must match u {tuple(u.shape)}")
        if z is not None and z.shape != u.shape:
            raise ValueError(f"z {tuple(z.shape)} must match u {tuple(u.shape)}")
        self.B_was_3d = B.dim() == 3
        for name, X in (("B", B), ("C", C)):
            ok = (X.dim() == 3 and X.shape == (batch, N, L)) or (
                X.dim() == 4 and X.shape[0] == batch and X.shape[2:] == (N, L)
                and X.shape[1] >= 1 and dim % X.shape[1] == 0
            )
            if not ok:
                raise ValueError(
                    f"{name} must be (batch={batch}, N={N}, L={L}) or (batch, groups, N, L) "
                    f"with dim {dim} a multiple of groups; got {tuple(X.shape)}"
                )
        if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):
            raise ValueError(f"B {tuple(B.shape)} and C {tuple(C.shape)} need the same groups")
        self.batch, self.dim, self.L, self.N = batch, dim, L, N
        self.u = _f32(u)  # (batch, dim, L)
        self.delta = _f32(delta)  # (batch, dim, L)
        self.z = _f32(z) if z is not None else torch.zeros(1, 1, 1)
        B4 = B.unsqueeze(1) if B.dim() == 3 else B  # (batch, G, N, L)
        C4 = C.unsqueeze(1) if C.dim() == 3 else C  # (batch, G, N, L)
        self.G = B4.shape[1]
        self.Bt = _f32(B4.detach().transpose(-1, -2))  # (batch, G, L, N)
        self.Ct = _f32(C4.detach().transpose(-1, -2))  # (batch, G, L, N)
        self.A = _f32(A)  # (dim, N)
        self.D = _f32(D) if D is not None else torch.zeros(dim)  # (dim,)
        self.bias = _f32(delta_bias) if delta_bias is not None else torch.zeros(dim)  # (dim,)
        if seq_idx is not None:
            if seq_idx.shape != (batch, L):
                raise ValueError(f"seq_idx must be (batch={batch}, L={L}), got {tuple(seq_idx.shape)}")
            keep = torch.ones(batch, L, dtype=torch.uint8)  # (batch, L)
            if L > 1:
                keep[:, 1:] = (seq_idx[:, 1:] == seq_idx[:, :-1]).to(torch.uint8)
            self.keep = keep
        else:
            self.keep = torch.ones(1, 1, dtype=torch.uint8)
        self.has_z = z is not None
        self.has_keep = seq_idx is not None


def _forward(P: _Prepared, initial_state, softplus: bool, save: bool, chunk: int):
    """Run the forward kernel; returns out f32 (batch, dim, L), last state, saved states."""
    batch, dim, L, N = P.batch, P.dim, P.L, P.N
    if initial_state is not None:
        if initial_state.shape != (batch, dim, N):
            raise ValueError(
                f"initial_state must be (batch={batch}, dim={dim}, N={N}), "
                f"got {tuple(initial_state.shape)}"
            )
        state = initial_state.detach().to(torch.float32).clone().contiguous()  # (batch,dim,N)
    else:
        state = torch.zeros(batch, dim, N)
    out = _empty(batch, dim, L)  # (batch, dim, L) f32
    n_chunks = max(1, (L + chunk - 1) // chunk)
    saved = _empty(n_chunks, batch, dim, N) if save else torch.empty(1, 1, 1, 1)
    if L > 0:
        _scan_fwd_kernel(
            _np(P.u), _np(P.delta), _np(P.z), _np(P.Bt), _np(P.Ct), _np(P.A), _np(P.D),
            _np(P.bias), _np(P.keep), _np(state), _np(out), _np(saved),
            P.has_z, P.has_keep, bool(softplus), bool(save), int(chunk),
            parts_for(batch * dim),
        )
    return out, state, saved


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx,
                delta_softplus, chunk, span):
        P = _Prepared(u, delta, A, B, C, D, z, delta_bias, seq_idx)
        out, last, saved = _forward(P, initial_state, delta_softplus, True, chunk)
        ctx.P = P
        ctx.saved_states = saved
        ctx.softplus = bool(delta_softplus)
        ctx.chunk = chunk
        ctx.span = span
        ctx.meta = (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype,
                    None if D is None else D.dtype, None if z is None else z.dtype,
                    None if delta_bias is None else delta_bias.dtype,
                    None if initial_state is None else initial_state.dtype)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, gout, glast):
        P: _Prepared = ctx.P
        batch, dim, L, N, G = P.batch, P.dim, P.L, P.N, P.G
        du, ddelta, dA_, dB_, dC_, dD_, dz_, dbias_, dinit_ = ctx.meta
        gout = _f32(gout) if gout is not None else torch.zeros(batch, dim, L)
        carry = (glast.detach().to(torch.float32).clone().contiguous() if glast is not None
                 else torch.zeros(batch, dim, N))  # (batch, dim, N)
        gu = _empty(batch, dim, L)
        gdelta = _empty(batch, dim, L)
        gz = _empty(batch, dim, L) if P.has_z else torch.zeros(1, 1, 1)
        gBt = _empty(batch, G, L, N)  # (batch, G, L, N)
        gCt = _empty(batch, G, L, N)
        gA64 = torch.zeros(batch, dim, N, dtype=torch.float64)
        gD64 = torch.zeros(batch, dim, dtype=torch.float64)
        gb64 = torch.zeros(batch, dim, dtype=torch.float64)
        if L > 0:
            _scan_bwd_kernel(
                _np(P.u), _np(P.delta), _np(P.z), _np(P.Bt), _np(P.Ct), _np(P.A), _np(P.D),
                _np(P.bias), _np(P.keep), _np(ctx.saved_states), _np(gout),
                _np(gu), _np(gdelta), _np(gz), _np(gBt), _np(gCt), _np(gA64), _np(gD64),
                _np(gb64), _np(carry),
                P.has_z, P.has_keep, ctx.softplus, int(ctx.chunk),
                ctx.span or _span(ctx.chunk, batch * G * N, L), parts_for(batch * dim),
            )
        ctx.P = ctx.saved_states = None  # free early

        def shapeB(gt, dtype):  # (batch, G, L, N) -> B's layout
            g = gt.transpose(-1, -2)  # (batch, G, N, L)
            g = g[:, 0] if P.B_was_3d else g
            return _dense(g, dtype)

        need = ctx.needs_input_grad
        return (
            gu.to(du) if need[0] else None,
            gdelta.to(ddelta) if need[1] else None,
            gA64.sum(0).to(dA_) if need[2] else None,
            shapeB(gBt, dB_) if need[3] else None,
            shapeB(gCt, dC_) if need[4] else None,
            gD64.sum(0).to(dD_) if (dD_ is not None and need[5]) else None,
            gz.to(dz_) if (dz_ is not None and need[6]) else None,
            gb64.sum(0).to(dbias_) if (dbias_ is not None and need[7]) else None,
            carry.to(dinit_) if (dinit_ is not None and need[8]) else None,
            None, None, None, None,
        )


def selective_scan_cpu(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    initial_state=None,
    seq_idx=None,
    *,
    chunk: int = DEFAULT_CHUNK,
    span: int | None = None,
):
    """Selective scan on CPU tensors; `selective_scan_ref`'s contract (kernels/reference.py).

    Returns out (batch, dim, L) in u's dtype [, last_state (batch, dim, N) float32].
    Differentiable in u, delta, A, B, C, D, z, delta_bias and initial_state.
    `chunk`: positions per recomputation chunk (memory dim*L*N/chunk for the saved states);
    `span`: positions between the backward's thread barriers (a multiple of `chunk`;
    default: each thread's dB/dC share <= ~1 MB). Both only change speed and memory.
    """
    if u.device.type != "cpu":
        # No numba on accelerators: the sequential reference keeps the contract there.
        from mamba_dna.kernels.reference import selective_scan_ref

        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state, initial_state=initial_state,
                                  seq_idx=seq_idx)
    ensure_threads()  # once: no more numba threads than CPUs we may run on
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, dim, L), got {tuple(u.shape)}")
    if chunk < 1 or (span is not None and (span < chunk or span % chunk)):
        raise ValueError(f"need chunk >= 1 and span a multiple of chunk; got {chunk}, {span}")
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors
    )
    if needs_grad:
        out, last = _SelectiveScanCPU.apply(
            u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx,
            bool(delta_softplus), int(chunk), span,
        )
    else:
        P = _Prepared(u, delta, A, B, C, D, z, delta_bias, seq_idx)
        out32, last, _ = _forward(P, initial_state, delta_softplus, False, int(chunk))
        out = out32.to(u.dtype)
    return (out, last) if return_last_state else out
