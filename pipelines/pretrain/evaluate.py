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


def val_masked_batches(cfg, data: WindowData, idx: list[int], batch: int):
    """The masked validation batches (mamba_dna.mlm.MaskedBatch, CPU) of windows `idx`: window
    i is masked with its own fixed generator, so every evaluation, and the two-sided k-mer
    baseline, score exactly the same positions; every chosen position reads MASK (see
    data.mask_windows: the model never sees the base it is scored on)."""
    from .data import MASK_VAL, mask_generator, mask_windows

    for i in range(0, len(idx), batch):
        part = idx[i : i + batch]
        tok, sm = data.get(part)  # (b, L) uint8, (b, L) bool
        tok = torch.from_numpy(np.ascontiguousarray(tok)).long()
        sm = torch.from_numpy(np.ascontiguousarray(sm)) if sm is not None else torch.zeros_like(tok, dtype=torch.bool)
        yield mask_windows(tok, sm, [mask_generator(cfg.seed, MASK_VAL, int(w), 0) for w in part], cfg,
                           all_mask=True)


@torch.no_grad()
def evaluate_masked(model, cfg, data: WindowData, idx: list[int], batch: int, device, autocast) -> tuple[float, float]:
    """(sum of masked bits, number of masked targets) over windows `idx` on this rank: -log2 P
    of the original base at the chosen positions, softmax over A, C, G, T (mlm.masked_bits)."""
    from mamba_dna.mlm import masked_bits

    was = model.training
    model.eval()
    total, count = 0.0, 0.0
    for mb in val_masked_batches(cfg, data, idx, batch):
        with autocast():
            lp = model.masked_log_probs(mb.input_ids.to(device))  # (b, L, 4)
        bits, n = masked_bits(lp.float().cpu(), mb)
        total += bits
        count += n
    model.train(was)
    return total, count
