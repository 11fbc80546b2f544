"""Sequential selective scan: the ground truth every fast path is tested against.

Plain PyTorch, one position at a time, fp32 state. Shapes (mamba_ssm's layout):

    u, delta, z      (batch, dim, L)
    A                (dim, N)            real, usually negative (A = -exp(A_log))
    B, C             (batch, N, L) or (batch, groups, N, L); dim is split into `groups`
                     equal blocks of channels that share one B/C
    D, delta_bias    (dim,)
    initial_state    (batch, dim, N)     state before position 0 (default zeros)
    seq_idx          (batch, L) int      record id per position; the state is reset to
                     zero where it changes (packed records), initial_state only applies
                     to the record at position 0
    out              (batch, dim, L) in u's dtype;  last_state (batch, dim, N) fp32

Recurrence, per channel d and state n:
    dt_t  = softplus(delta_t + delta_bias)            (if delta_softplus)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t   = sum_n C_t[n] h_t[n] + D * u_t
    out_t = y_t * silu(z_t)                            (if z is given)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(X: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) -> (batch, dim, N, L) view (no copy for G == 1)."""
    if X.dim() == 3:
        return X.unsqueeze(1)  # (batch, 1, N, L): broadcasts over dim
    b, g, n, L = X.shape
    if dim % g:
        raise ValueError(f"dim {dim} is not a multiple of groups {g}")
    return X.repeat_interleave(dim // g, dim=1)  # (batch, dim, N, L)


def selective_scan_ref(
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
):
    """Sequential reference; differentiable through autograd (including initial_state).

    Computes in float32, or in float64 when u is float64 (for gradcheck).
    """
    dtype_in = u.dtype
    ct = torch.float64 if dtype_in == torch.float64 else torch.float32  # compute dtype
    batch, dim, L = u.shape
    u = u.to(ct)
    delta = delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(ct)
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(ct)
    Bx = _expand_groups(B.to(ct), dim)  # (batch, dim|1, N, L)
    Cx = _expand_groups(C.to(ct), dim)  # (batch, dim|1, N, L)
    N = A.shape[1]
    if initial_state is not None:
        x = initial_state.to(ct)  # (batch, dim, N)
    else:
        x = u.new_zeros(batch, dim, N)
    ys = []
    for t in range(L):
        if seq_idx is not None and t > 0:
            keep = (seq_idx[:, t] == seq_idx[:, t - 1]).to(ct)[:, None, None]  # (batch,1,1)
            x = x * keep
        dA = torch.exp(delta[:, :, t, None] * A)  # (batch, dim, N)
        dBu = delta[:, :, t, None] * Bx[..., t] * u[:, :, t, None]  # (batch, dim, N)
        x = dA * x + dBu
        ys.append((x * Cx[..., t]).sum(-1))  # (batch, dim)
    y = torch.stack(ys, dim=-1) if L else u.new_zeros(batch, dim, 0)  # (batch, dim, L)
    out = y if D is None else y + u * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, x) if return_last_state else out


def selective_state_update_ref(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False
):
    """One step of the recurrence, mamba_ssm's `selective_state_update` contract.

    state (batch, dim, N) fp32, updated in place; x, dt, z (batch, dim);
    B, C (batch, N) or (batch, groups, N); returns out (batch, dim) in x's dtype.
    """
    batch, dim = x.shape
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    Bf, Cf = B.float(), C.float()
    if Bf.dim() == 3:  # (batch, groups, N) -> (batch, dim, N)
        Bf = Bf.repeat_interleave(dim // Bf.shape[1], dim=1)
        Cf = Cf.repeat_interleave(dim // Cf.shape[1], dim=1)
    else:
        Bf, Cf = Bf[:, None, :], Cf[:, None, :]  # (batch, 1, N)
    dA = torch.exp(dt[..., None] * A.float())  # (batch, dim, N)
    dBx = dt[..., None] * Bf * x.float()[..., None]  # (batch, dim, N)
    new = state.float() * dA + dBx
    state.copy_(new.to(state.dtype))
    out = (new * Cf).sum(-1)  # (batch, dim)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(x.dtype)
