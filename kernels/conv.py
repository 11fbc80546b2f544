"""Causal depthwise conv1d (+ SiLU) on CPU: fused numba kernels, forward and backward.

The Mamba block's short convolution, the `causal-conv1d` package's contract:

    causal_conv1d_cpu(x, weight, bias=None, initial_state=None, activation="silu")
    x              (batch, dim, L)      float32 (any strides along batch/dim; L contiguous
                                        is fastest)
    weight         (dim, K)             depthwise taps, K = d_conv (e.g. 4)
    bias           (dim,) or None
    initial_state  (batch, dim, K - 1)  the inputs before position 0 (streaming: the last
                                        K - 1 inputs of the previous piece); zeros if None
    activation     "silu" or None
    out            (batch, dim, L)      out_t = act(bias + sum_k weight[k] * x_{t - K + 1 + k})

Differentiable in x, weight, bias and initial_state. The reference is
`causal_conv1d_ref` (F.conv1d over the explicitly padded input), one import away.

Why a kernel: PyTorch's CPU depthwise conv1d (oneDNN) costs about as much as the whole
selective scan at dim 512, L 16k, and the padding copy and the separate SiLU pass add two
more sweeps over (batch, dim, L). Here one pass per channel does padding, the K taps, the
bias and the SiLU: each tap is a loop with one store over a chunk of positions (vectorised
by LLVM), the sigmoid uses the kernels' vectorised float32 exp (`_numba.vexp`). The backward recomputes the pre-activation per chunk (K - 1
positions of overlap) instead of saving it, so forward+backward keeps only x.
Accumulation is float32 per position; the gradients of weight and bias (sums over L) are
carried in float64 per channel.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from mamba_dna.kernels._numba import FASTMATH, ONE, ZERO, ensure_threads, parts_for, vexp

__all__ = ["causal_conv1d_cpu", "causal_conv1d_ref"]

CHUNK = 1024  # positions per chunk (per-thread buffers of a few chunk-sized rows)


def causal_conv1d_ref(x, weight, bias=None, initial_state=None, activation="silu"):
    """Plain PyTorch: pad with the initial state (or zeros), depthwise F.conv1d, activation."""
    _check(x, weight, bias, initial_state, activation)
    K = weight.shape[1]
    if initial_state is None:
        xp = F.pad(x, (K - 1, 0))  # (batch, dim, L + K - 1)
    else:
        xp = torch.cat([initial_state.to(x.dtype), x], dim=-1)  # (batch, dim, L + K - 1)
    out = F.conv1d(xp, weight.unsqueeze(1).to(x.dtype), bias, groups=x.shape[1])  # (batch, dim, L)
    return F.silu(out) if activation == "silu" else out


def _check(x, weight, bias, initial_state, activation):
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, dim, L), got {tuple(x.shape)}")
    b, d, _ = x.shape
    if weight.dim() != 2 or weight.shape[0] != d or weight.shape[1] < 1:
        raise ValueError(f"weight must be (dim={d}, K), got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (d,):
        raise ValueError(f"bias must be (dim={d},), got {tuple(bias.shape)}")
    K = weight.shape[1]
    if initial_state is not None and initial_state.shape != (b, d, K - 1):
        raise ValueError(
            f"initial_state must be (batch={b}, dim={d}, K-1={K - 1}), got {tuple(initial_state.shape)}"
        )
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")


# ----------------------------------------------------------------------------- kernels


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _load(x, init, has_init, b, d, t0, n, K, buf):
    """buf[:n] = the inputs at positions t0 - (K - 1) ... t0 - (K - 1) + n - 1 (init / 0 before 0)."""
    s = t0 - (K - 1)
    j0 = min(max(-s, 0), n)  # entries before position 0
    for j in range(j0):
        buf[j] = init[b, d, K - 1 + s + j] if has_init else ZERO
    xs = x[b, d, s + j0: s + n]  # contiguous along L: a plain copy loop
    for j in range(n - j0):
        buf[j0 + j] = xs[j]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _pre(w, bias_d, buf, m, K, pre):
    """pre[i] = bias + sum_k w[k] buf[i + k] for i < m (one store per loop: vectorised)."""
    for i in range(m):
        pre[i] = bias_d
    for k in range(K):
        wk = w[k]
        for i in range(m):
            pre[i] += wk * buf[i + k]


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _chunk_pre(x, init, has_init, wd, bias_d, b, d, t0, n, K, silu, buf, pre, sig, bits):
    """pre[:n] = the conv at positions t0 .. t0+n-1 and, when `silu`, sig[:n] = sigmoid(pre)."""
    _load(x, init, has_init, b, d, t0, n + K - 1, K, buf)
    _pre(wd, bias_d, buf, n, K, pre)
    if silu:
        for i in range(n):
            sig[i] = -pre[i]
        vexp(sig, sig, bits, n)
        for i in range(n):
            sig[i] = ONE / (ONE + sig[i])


@njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _conv_fwd_kernel(x, w, bias, init, out, has_init, silu, chunk, n_parts):  # pragma: no cover
    """x, out (batch, dim, L); w (dim, K); bias (dim,); init (batch, dim, K-1)."""
    batch, dim, L = x.shape
    K = w.shape[1]
    BD = batch * dim
    for p in prange(n_parts):
        lo = p * BD // n_parts
        hi = (p + 1) * BD // n_parts
        buf = np.empty(chunk + K, np.float32)  # (chunk + K - 1,) inputs with left context
        pre = np.empty(chunk, np.float32)
        e = np.empty(chunk, np.float32)
        bits = np.empty(chunk, np.int32)
        for bd in range(lo, hi):
            b = bd // dim
            d = bd - b * dim
            wd = w[d]  # (K,)
            for t0 in range(0, L, chunk):
                m = min(chunk, L - t0)
                _chunk_pre(x, init, has_init, wd, bias[d], b, d, t0, m, K, silu, buf, pre, e, bits)
                if silu:
                    for i in range(m):
                        out[b, d, t0 + i] = pre[i] * e[i]
                else:
                    for i in range(m):
                        out[b, d, t0 + i] = pre[i]


@njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _conv_bwd_kernel(x, w, bias, init, gout, gx, gw64, gb64, ginit,
                     has_init, silu, chunk, n_parts):  # pragma: no cover
    """gout, gx (batch, dim, L); gw64 (batch, dim, K), gb64 (batch, dim) float64 sums;
    ginit (batch, dim, K-1). Chunks recompute the pre-activation over K - 1 positions past
    their end, where their inputs' gradients also come from."""
    batch, dim, L = x.shape
    K = w.shape[1]
    BD = batch * dim
    for p in prange(n_parts):
        lo = p * BD // n_parts
        hi = (p + 1) * BD // n_parts
        buf = np.empty(chunk + 2 * K, np.float32)  # inputs [t0 - K + 1, e1)
        pre = np.empty(chunk + K, np.float32)  # positions [t0, e1)
        gp = np.zeros(chunk + 2 * K, np.float32)  # dLoss/dpre at [t0, e1), zero-padded after
        e = np.empty(chunk + K, np.float32)
        bits = np.empty(chunk + K, np.int32)
        for bd in range(lo, hi):
            b = bd // dim
            d = bd - b * dim
            wd = w[d]  # (K,)
            for t0 in range(0, L, chunk):
                m = min(chunk, L - t0)
                m2 = min(chunk + K - 1, L - t0)  # positions whose pre needs recomputing
                _chunk_pre(x, init, has_init, wd, bias[d], b, d, t0, m2, K, silu, buf, pre, e, bits)
                if silu:
                    for i in range(m2):
                        s = e[i]  # sigmoid(pre)
                        gp[i] = gout[b, d, t0 + i] * s * (ONE + pre[i] * (ONE - s))
                else:
                    for i in range(m2):
                        gp[i] = gout[b, d, t0 + i]
                for i in range(m2, m2 + K):
                    gp[i] = ZERO
                # x at position t0 + i feeds pre at t0 + i + (K - 1 - k), k = 0..K-1
                for i in range(m):
                    e[i] = ZERO
                for k in range(K):
                    wk = wd[k]
                    o = K - 1 - k
                    for i in range(m):
                        e[i] += wk * gp[i + o]
                for i in range(m):
                    gx[b, d, t0 + i] = e[i]
                for k in range(K):
                    acc = ZERO
                    for i in range(m):
                        acc += gp[i] * buf[i + k]
                    gw64[b, d, k] += acc
                acc = ZERO
                for i in range(m):
                    acc += gp[i]
                gb64[b, d] += acc
                if t0 == 0:
                    # initial input j (position j - (K - 1)) feeds pre at j - k for k <= j
                    for j in range(K - 1):
                        a = ZERO
                        for k in range(K):
                            if k <= j and j - k < m2:
                                a += wd[k] * gp[j - k]
                        ginit[b, d, j] = a


# ----------------------------------------------------------------------------- host side


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32)


class _CausalConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu):
        b, d, L = x.shape
        K = weight.shape[1]
        xf = _f32(x)  # (batch, dim, L); strided views are read in place
        wf = _f32(weight).contiguous()  # (dim, K)
        bf = _f32(bias).contiguous() if bias is not None else torch.zeros(d)
        init = (_f32(initial_state).contiguous() if initial_state is not None
                else torch.zeros(1, 1, max(K - 1, 1)))
        out = torch.empty(b, d, L)  # (batch, dim, L)
        if L > 0:
            _conv_fwd_kernel(xf.numpy(), wf.numpy(), bf.numpy(), init.numpy(), out.numpy(),
                             initial_state is not None, silu, CHUNK, parts_for(b * d))
        ctx.save_for_backward(xf, wf, bf, init)
        ctx.flags = (initial_state is not None, silu, bias is not None)
        ctx.dtypes = (x.dtype, weight.dtype, None if bias is None else bias.dtype,
                      None if initial_state is None else initial_state.dtype)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, gout):
        xf, wf, bf, init = ctx.saved_tensors
        has_init, silu, has_bias = ctx.flags
        b, d, L = xf.shape
        K = wf.shape[1]
        g = _f32(gout).contiguous()  # (batch, dim, L)
        gx = torch.empty(b, d, L)
        gw64 = torch.zeros(b, d, K, dtype=torch.float64)
        gb64 = torch.zeros(b, d, dtype=torch.float64)
        ginit = torch.zeros(b, d, max(K - 1, 1))
        if L > 0:
            _conv_bwd_kernel(xf.numpy(), wf.numpy(), bf.numpy(), init.numpy(), g.numpy(),
                             gx.numpy(), gw64.numpy(), gb64.numpy(), ginit.numpy(),
                             has_init, silu, CHUNK, parts_for(b * d))
        dx, dw, db, di = ctx.dtypes
        need = ctx.needs_input_grad
        return (
            gx.to(dx) if need[0] else None,
            gw64.sum(0).to(dw) if need[1] else None,
            gb64.sum(0).to(db) if (has_bias and need[2]) else None,
            ginit[..., : K - 1].to(di) if (has_init and need[3]) else None,
            None,
        )


def causal_conv1d_cpu(x, weight, bias=None, initial_state=None, activation="silu"):
    """Fused causal depthwise conv1d (+ SiLU) on CPU tensors; see the module docstring."""
    _check(x, weight, bias, initial_state, activation)
    if x.device.type != "cpu":
        return causal_conv1d_ref(x, weight, bias, initial_state, activation)
    ensure_threads()
    return _CausalConv1d.apply(x, weight, bias, initial_state, activation == "silu")
