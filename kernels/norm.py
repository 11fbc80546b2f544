"""RMSNorm on CPU: one fused numba pass per direction (forward saves one float per row).

    rms_norm_cpu(x, weight, eps)   x (..., d), weight (d,) -> (..., d) in x's dtype
    y = x * r * weight,   r = 1 / sqrt(mean(x^2) + eps)      (per row, float32)

Differentiable in x and weight. The reference is `rms_norm_ref` (the same formula in
PyTorch ops), one import away.

Why a kernel: written as PyTorch ops, RMSNorm is five sweeps over (rows, d) forward
(square, mean, rsqrt, two products) and about a dozen backward, each a separate pass over
memory; at L 16k and d 256 the model's five norms cost about as much as a layer's
selective scan in forward+backward. Here a row is read once forward (saving r) and once
backward:  dx = r * (g*w - x * r^2 * mean(g*w*x)),  dw = sum_rows g * x * r.
The dw sums are float32 per thread block of rows, added in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from mamba_dna.kernels._numba import FASTMATH, ensure_threads, parts_for

__all__ = ["rms_norm_cpu", "rms_norm_ref"]


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Plain PyTorch (float32 math): the ground truth for `rms_norm_cpu`."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.float()).to(x.dtype)


@njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _rms_fwd_kernel(x, w, eps, y, r, n_parts):  # pragma: no cover - compiled
    """x, y (rows, d) f32; w (d,); r (rows,) out: 1 / rms of each row."""
    rows, d = x.shape
    for p in prange(n_parts):
        for i in range(p * rows // n_parts, (p + 1) * rows // n_parts):
            xi = x[i]  # (d,)
            ss = np.float32(0.0)
            for j in range(d):
                ss += xi[j] * xi[j]
            ri = np.float32(1.0) / np.sqrt(ss / np.float32(d) + eps)
            r[i] = ri
            yi = y[i]
            for j in range(d):
                yi[j] = xi[j] * ri * w[j]


@njit(parallel=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def _rms_bwd_kernel(x, w, r, g, gx, gw64, n_parts):  # pragma: no cover - compiled
    """g, gx (rows, d); gw64 (n_parts, d) float64 partial sums of dLoss/dw."""
    rows, d = x.shape
    for p in prange(n_parts):
        acc = np.zeros(d, np.float32)  # this block's dw, flushed to float64 every 256 rows
        k = 0
        for i in range(p * rows // n_parts, (p + 1) * rows // n_parts):
            xi = x[i]
            gi = g[i]
            ri = r[i]
            s = np.float32(0.0)
            for j in range(d):
                s += gi[j] * w[j] * xi[j]
            c = ri * ri * s / np.float32(d)
            gxi = gx[i]
            for j in range(d):
                gxi[j] = ri * (gi[j] * w[j] - xi[j] * c)
            for j in range(d):
                acc[j] += gi[j] * xi[j] * ri
            k += 1
            if k == 256:
                for j in range(d):
                    gw64[p, j] += acc[j]
                    acc[j] = np.float32(0.0)
                k = 0
        for j in range(d):
            gw64[p, j] += acc[j]


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape, d = x.shape, x.shape[-1]
        xf = x.detach().to(torch.float32).reshape(-1, d).contiguous()  # (rows, d)
        wf = weight.detach().to(torch.float32).contiguous()  # (d,)
        y = torch.empty_like(xf)  # (rows, d)
        r = torch.empty(xf.shape[0])  # (rows,)
        if xf.shape[0]:
            _rms_fwd_kernel(xf.numpy(), wf.numpy(), np.float32(eps), y.numpy(), r.numpy(),
                            parts_for(xf.shape[0]))
        ctx.save_for_backward(xf, wf, r)
        ctx.meta = (shape, x.dtype, weight.dtype)
        return y.reshape(shape).to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        xf, wf, r = ctx.saved_tensors
        shape, xdt, wdt = ctx.meta
        rows, d = xf.shape
        g = gy.to(torch.float32).reshape(rows, d).contiguous()  # (rows, d)
        gx = torch.empty_like(xf)
        parts = parts_for(max(rows, 1))
        gw64 = torch.zeros(parts, d, dtype=torch.float64)
        if rows:
            _rms_bwd_kernel(xf.numpy(), wf.numpy(), r.numpy(), g.numpy(), gx.numpy(),
                            gw64.numpy(), parts)
        return gx.reshape(shape).to(xdt), gw64.sum(0).to(wdt), None


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Fused RMSNorm for CPU tensors (other devices: `rms_norm_ref`)."""
    if x.shape[-1] != weight.shape[-1] or weight.dim() != 1:
        raise ValueError(f"weight must be ({x.shape[-1]},), got {tuple(weight.shape)}")
    if x.device.type != "cpu":
        return rms_norm_ref(x, weight, eps)
    ensure_threads()
    return _RMSNorm.apply(x, weight, float(eps))
