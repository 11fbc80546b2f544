"""The bar every run is measured against: the best k-mer Markov model (order chosen on
validation), fitted on the training windows and scored on the network's validation windows."""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from mamba_dna.tokenizer import N as N_ID

from .config import PretrainConfig
from .data import WindowData
from .evaluate import nll_bases

LN2 = math.log(2.0)


def join_windows(tokens: np.ndarray) -> np.ndarray:
    """(n, L) uint8 windows -> (n * (L + 1),) with an N after each window: an N breaks every
    Markov context, so nothing is counted across two windows."""
    sep = np.full((tokens.shape[0], 1), N_ID, np.uint8)
    return np.concatenate([tokens, sep], axis=1).reshape(-1)


def _training_text(train: WindowData, sel: np.ndarray, chunk_bytes: int = 1 << 22) -> list[np.ndarray]:
    """The selected windows joined by N, in ~4 Mb arrays: counting is a few big vectorised
    passes, not one per window."""
    out, buf, size = [], [], 0
    for i in range(0, len(sel), 256):
        tok, _ = train.get(sel[i : i + 256])  # (b, L) uint8
        buf.append(join_windows(tok))
        size += buf[-1].size
        if size >= chunk_bytes:
            out.append(np.concatenate(buf))
            buf, size = [], 0
    if buf:
        out.append(np.concatenate(buf))
    return out


def markov_baseline(cfg: PretrainConfig, train: WindowData, val: WindowData, idx: list[int]) -> dict:
    """Best k-mer Markov model (order chosen on validation) on the same windows as the network."""
    from mamba_dna.baselines import best_markov

    n_train = max(1, min(len(train), cfg.markov_max_bases // max(train.length, 1)))
    sel = np.linspace(0, len(train) - 1, n_train).round().astype(np.int64) if n_train < len(train) else np.arange(len(train))
    va = [val.get([int(i)])[0][0] for i in idx]
    t0 = time.time()
    res = best_markov(_training_text(train, sel), va, cfg.markov_orders)
    mm = res[0] if isinstance(res, tuple) else res
    total = count = 0.0
    for i in range(0, len(va), 64):
        ids = torch.from_numpy(np.stack(va[i : i + 64])).long()  # (b, L)
        lp, _ = mm.log_probs(ids)  # (b, L, 4)
        nll, n = nll_bases(torch.as_tensor(lp).float(), ids)
        total, count = total + nll, count + n
    return {
        "name": getattr(mm, "name", f"markov-{mm.order}"),
        "order": int(getattr(mm, "order", -1)),
        "bits_per_base": total / max(count, 1) / LN2,
        "train_bases": int(len(sel) * train.length),
        "val_bases": int(count),
        "fit_s": round(time.time() - t0, 2),
    }


def kmer2_baseline(cfg: PretrainConfig, train: WindowData, val: WindowData, idx: list[int]) -> dict:
    """The bar of a masked model: the two-sided k-mer model P(base | k left, k right), fitted on
    the training windows (both strands), k and smoothing chosen on the masked validation
    batches, scored at exactly the positions the network's validation masks (other masked
    positions in a context are marginalised, as the network cannot see them either)."""
    from mamba_dna.baselines import best_kmer2, kmer2_auto_ks

    from .evaluate import val_masked_batches

    n_train = max(1, min(len(train), cfg.markov_max_bases // max(train.length, 1)))
    sel = np.linspace(0, len(train) - 1, n_train).round().astype(np.int64) if n_train < len(train) else np.arange(len(train))
    batches = list(val_masked_batches(cfg, val, idx, 64))
    t0 = time.time()
    ks = cfg.kmer2_ks if cfg.kmer2_ks is not None else list(kmer2_auto_ks(int(len(sel) * train.length)))
    best, table = best_kmer2(_training_text(train, sel), batches, ks)
    return {
        "name": best.name,
        "kind": "kmer2",
        "k": best.k,
        "alpha": best.alpha,
        "masked_bits_per_base": table[best.k],
        "val_bits_by_k": {str(k): v for k, v in table.items()},
        "train_bases": int(len(sel) * train.length),
        "val_targets": int(sum(b.n_targets for b in batches)),
        "fit_s": round(time.time() - t0, 2),
    }
