"""Finiteness checks for model outputs: a NaN or Inf is a counted status, never "ok".

Pipelines test each item's result with `nonfinite_rows` before writing it, give those
items the status `NONFINITE` and count them in the run summary. Model weights are checked
once at load (`MambaLM.load_weights`).
"""

from __future__ import annotations

import numpy as np
import torch

NONFINITE = "nonfinite"  # the status of an item whose model output holds NaN or Inf


def all_finite(x) -> bool:
    """True when every value of a tensor or array is finite (integers always are)."""
    return nonfinite_count(x) == 0


def nonfinite_count(x) -> int:
    """How many values of a tensor or array are NaN or +-Inf."""
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point() or x.is_complex()):
            return 0
        return int(x.numel() - torch.isfinite(x).sum().item())
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.inexact):
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def nonfinite_rows(x) -> np.ndarray:
    """bool (B,): rows (first axis) of a batch holding any NaN or Inf; scalars per row ok."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            return np.zeros(x.shape[0], bool)
        bad = ~torch.isfinite(x.detach())
        return bad.reshape(x.shape[0], -1).any(dim=1).cpu().numpy()
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.inexact):
        return np.zeros(a.shape[0], bool)
    return ~np.isfinite(a).reshape(a.shape[0], -1).all(axis=1)
