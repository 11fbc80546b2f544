"""Validation loss: -log P of every A/C/G/T target over the evaluation windows."""

from __future__ import annotations

import numpy as np
import torch

from .data import BASE_HI, BASE_LO, WindowData


@torch.no_grad()
def evaluate(model, data: WindowData, idx: list[int], batch: int, device, autocast) -> tuple[float, float]:
    """(sum of -log P in nats, number of scored bases) over windows `idx` on this rank.

    Scorer protocol: row t of log-probs over A, C, G, T predicts base t+1.
    """
    was = model.training
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, len(idx), batch):
        tok, _ = data.get(idx[i : i + batch])
        ids = torch.from_numpy(np.ascontiguousarray(tok)).long().to(device)  # (b, L)
        with autocast():
            lp, _ = model.log_probs(ids)  # (b, L, 4)
        nll, n = nll_bases(lp.float(), ids)
        total += nll
        count += n
    model.train(was)
    return total, count


def nll_bases(lp: torch.Tensor, ids: torch.Tensor) -> tuple[float, float]:
    """lp (b, L, 4) row t -> base t+1; targets outside A/C/G/T are skipped."""
    tgt = ids[:, 1:]  # (b, L-1)
    ok = (tgt >= BASE_LO) & (tgt <= BASE_HI)
    t4 = (tgt - BASE_LO).clamp(0, 3)
    nll = -lp[:, :-1].gather(-1, t4.unsqueeze(-1)).squeeze(-1)  # (b, L-1)
    return float(nll[ok].double().sum()), float(ok.sum())
