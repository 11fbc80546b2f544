"""Running a model over long token arrays, pooled on the device (mean / max / last) or handed
out per position in pieces.

Causal models stream: hidden states piece by piece with the recurrent state carried, so an
item costs the memory of one piece. A bidirectional model (CaduceusLM) cannot stream left to
right (position t depends on everything after it): it runs each item in one `hidden` call,
which on a CPU tiles the scan of both directions with their states carried (the model's own
tiling), so memory stays O(L x d) with no (L, d_inner, d_state) tensor; the rows are then
handed out in pieces like the streamed ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mamba_dna.errors import ConfigError
from mamba_dna.pipelines.embed.arch import check_pool, is_bidirectional, width
from mamba_dna.pipelines.embed.config import POOLS
from mamba_dna.tokenizer import PAD, reverse_complement


class Pooler:
    """Running mean / max / last over the valid positions of a batch, fed piece by piece.

    Pools on the model's device: only the (B, d) result moves to the host. Pieces without
    padding (the usual case: equal-length batches) take one reduction over the whole piece.
    """

    def __init__(self, mode: str, lengths: torch.Tensor, d: int, device: torch.device):
        self.mode, self.lengths = mode, [int(n) for n in lengths]  # valid length per row
        B = len(self.lengths)
        f64 = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        if mode == "max":
            self.acc = torch.full((B, d), -torch.inf, dtype=torch.float32, device=device)
        else:
            self.acc = torch.zeros(B, d, dtype=f64 if mode == "mean" else torch.float32,
                                   device=device)  # (B, d)

    def update(self, start: int, h: torch.Tensor) -> None:
        """h (B, l, d) float32: rows for positions start .. start+l-1."""
        l = h.shape[1]
        if self.mode == "last":
            for b, n in enumerate(self.lengths):
                if start < n <= start + l:  # the last valid position is in this piece
                    self.acc[b] = h[b, n - 1 - start]
            return
        valid = [min(max(n - start, 0), l) for n in self.lengths]  # valid rows per item
        if all(k == l for k in valid):
            if self.mode == "mean":
                self.acc += h.sum(1).to(self.acc.dtype)  # (B, d)
            else:
                torch.maximum(self.acc, h.amax(1), out=self.acc)
            return
        for b, k in enumerate(valid):  # padding: reduce each row over its valid part
            if k == 0:
                continue
            if self.mode == "mean":
                self.acc[b] += h[b, :k].sum(0).to(self.acc.dtype)
            else:
                torch.maximum(self.acc[b], h[b, :k].amax(0), out=self.acc[b])

    def result(self) -> torch.Tensor:
        """(B, d) float32 on the host."""
        if self.mode == "mean":
            n = torch.tensor(self.lengths, dtype=self.acc.dtype, device=self.acc.device)
            return (self.acc / n.clamp(min=1)[:, None]).float().cpu()
        return self.acc.cpu()


@torch.no_grad()
def stream_hidden(model, ids: torch.Tensor, layer: int | None, piece: int,
                  sink: Callable[[int, torch.Tensor], None]) -> None:
    """Run ids (B, L) through `model.hidden` in pieces with the state carried across.

    `sink(start, h)` receives h (B, l, d) for positions start .. start+l-1. Padding is on
    the right, so (the model being causal) it never changes a valid position.
    """
    state = None
    L = ids.shape[1]
    for s in range(0, L, piece):
        h, state = model.hidden(ids[:, s : s + piece], state=state, layer=layer)  # (B, l, d)
        sink(s, h)


def _batch_tensor(seqs: Sequence[np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)  # (B,)
    L = int(lengths.max())
    ids = np.full((len(seqs), L), PAD, dtype=np.int64)  # (B, L) right-padded
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = s
    return torch.from_numpy(ids).to(device), lengths


def embed_batch(model, seqs: Sequence[np.ndarray], *, pool: str = "mean", layer: int | None = None,
                rc_average: bool = False, piece: int = 1 << 15,
                position_sink: Callable[[int, int, int, torch.Tensor, bool], None] | None = None,
                position_dtype: torch.dtype = torch.float32) -> np.ndarray | None:
    """Pooled embeddings (B, d) float32 of token arrays `seqs` (each (L_b,) uint8 ids).

    With `position_sink`, per-position rows are handed over piece by piece as
    `position_sink(b, start, end, h (end-start, d), is_rc)`: forward rows in order first,
    then (with rc_average) reverse-strand rows already flipped to forward coordinates, for
    the caller to average in place. Nothing of size (L, d) is ever held here. The rows are
    host tensors of `position_dtype`, cast on the model's device before the one copy to
    the host per piece (float16 halves that copy on a GPU).

    rc_average for pooled output averages the two strands' pooled vectors (for "last", the
    last position of each strand, which has seen the whole sequence).

    A bidirectional model goes through `_embed_bidirectional` (same contract; rows already
    strand-averaged, so the sink only sees is_rc=False; (B, 2 d_model) for a Caduceus-PS
    without rc_average).
    """
    if is_bidirectional(model):
        return _embed_bidirectional(model, seqs, pool=pool, layer=layer, rc_average=rc_average,
                                    piece=piece, position_sink=position_sink,
                                    position_dtype=position_dtype)
    device = next(model.parameters()).device
    ids, lengths = _batch_tensor(seqs, device)  # (B, L), (B,)
    d = int(model.config.d_model)
    strands = [False, True] if rc_average else [False]
    pooled = []
    for is_rc in strands:
        if is_rc:
            rc = [reverse_complement(np.asarray(s)) for s in seqs]
            ids, _ = _batch_tensor(rc, device)
        pooler = Pooler(pool, lengths, d, device) if pool != "none" else None

        def sink(start, h, pooler=pooler, is_rc=is_rc):
            if pooler is not None:
                pooler.update(start, h)
            if position_sink is None:
                return
            h = h.to(position_dtype).cpu()  # (B, l, d); no copy when already fp32 on the CPU
            for b in range(h.shape[0]):
                n = int(lengths[b])
                e = min(start + h.shape[1], n)
                if e <= start:
                    continue
                rows = h[b, : e - start]  # (e-start, d)
                if is_rc:  # rc positions [start, e) = forward positions [n-e, n-start), reversed
                    position_sink(b, n - e, n - start, rows.flip(0), True)
                else:
                    position_sink(b, start, e, rows, False)

        stream_hidden(model, ids, layer, piece, sink)
        if pooler is not None:
            pooled.append(pooler.result())
    if pool == "none":
        return None
    out = pooled[0] if len(pooled) == 1 else (pooled[0] + pooled[1]) / 2  # (B, d)
    return out.numpy()


@torch.no_grad()
def _embed_bidirectional(model, seqs: Sequence[np.ndarray], *, pool: str, layer: int | None,
                         rc_average: bool, piece: int,
                         position_sink: Callable[[int, int, int, torch.Tensor, bool], None] | None,
                         position_dtype: torch.dtype) -> np.ndarray | None:
    """`embed_batch` for a CaduceusLM: one `model.hidden` call per group of equal-length items.

    Items of different lengths never share a call (right padding would reach every position
    through the reverse direction). With rc_average, `hidden` makes the rows strand-symmetric
    itself: PS the mean of its two halves (one pass), Ph the mean with the reverse-complement
    pass, position by position, so every pooling of them is symmetric too.
    """
    check_pool(model, pool)
    device = next(model.parameters()).device
    C = width(model, rc_average)
    out = torch.zeros(len(seqs), C, dtype=torch.float32)  # (B, C)
    groups: dict[int, list[int]] = {}
    for b, s in enumerate(seqs):
        groups.setdefault(len(s), []).append(b)
    for n, rows in groups.items():
        ids = torch.from_numpy(np.stack([np.asarray(seqs[b], dtype=np.int64) for b in rows]))
        h = model.hidden(ids.to(device), layer=layer, rc_average=rc_average).float()  # (b, n, C)
        if pool != "none":
            pooler = Pooler(pool, torch.full((len(rows),), n), C, device)
            pooler.update(0, h)
            out[rows] = pooler.result()
        if position_sink is not None:
            for s in range(0, n, piece):  # pieces, as the streamed path hands them out
                e = min(n, s + piece)
                part = h[:, s:e].to(position_dtype).cpu()  # (b, e-s, C); no copy for fp32 CPU
                for j, b in enumerate(rows):
                    position_sink(b, s, e, part[j], False)
        del h
    return None if pool == "none" else out.numpy()


def embed_sequences(model, seqs: Sequence[np.ndarray], *, pool: str = "mean",
                    layer: int | None = None, rc_average: bool = False, piece: int = 1 << 15,
                    batch_tokens: int = 1 << 16, max_batch: int = 64) -> np.ndarray:
    """Pooled embeddings (n, d) float32 for a list of token arrays (the Python API).

    Consecutive sequences of equal length share a batch (up to `batch_tokens` tokens).
    """
    if pool not in POOLS or pool == "none":
        raise ConfigError(f"pool {pool!r} is not one of mean, max, last")
    check_pool(model, pool, "pool")
    out = []
    for rows in make_batches([len(s) for s in seqs], batch_tokens, max_batch):
        out.append(embed_batch(model, [seqs[r] for r in rows], pool=pool, layer=layer,
                               rc_average=rc_average, piece=piece))
    return np.concatenate(out) if out else np.zeros((0, width(model, rc_average)), np.float32)


def per_position(model, seq: np.ndarray, *, layer: int | None = None, rc_average: bool = False,
                 piece: int = 1 << 15) -> np.ndarray:
    """Per-position embeddings (L, d) float32 of one token array (held in memory: for
    megabase items use `run_embed`, which writes them piece by piece). d: `arch.width`."""
    H = np.zeros((len(seq), width(model, rc_average)), np.float32)

    def sink(b, s, e, h, is_rc):
        if is_rc:
            H[s:e] = (H[s:e] + h.numpy()) / 2
        else:
            H[s:e] = h.numpy()

    embed_batch(model, [seq], pool="none", layer=layer, rc_average=rc_average, piece=piece,
                position_sink=sink)
    return H


def make_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Consecutive items of equal length grouped up to batch_tokens tokens (deterministic)."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for i, n in enumerate(lengths):
        cap = max(1, min(max_batch, batch_tokens // max(int(n), 1)))
        if cur and (lengths[cur[0]] != n or len(cur) >= cap):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches
