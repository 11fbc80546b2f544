"""Masked language modelling: Caduceus-style masking, the MLM loss, masked bits per base and
the zero-shot variant scores of masked models (MLM_LLR and its unmasked approximation).

Masking (`mask_tokens`), as Caduceus trains:
    each A/C/G/T position is chosen independently with probability `mask_prob` (0.15); a
    chosen position becomes MASK with probability 0.8, a uniformly random base (A/C/G/T, which
    may equal the original) with 0.1 and stays as it is with 0.1. N, PAD, BOS, EOS and MASK are
    never chosen, so never targets. Every call draws the same number of random values from
    the given `torch.Generator` whatever the tokens, so saving `generator.get_state()` with a
    checkpoint makes resume exact.

Two figures, never to be confused:
    `mlm_loss`     the training loss: cross-entropy with the softmax over the FULL vocabulary
                   (nats), a weighted mean over the chosen positions with the weights of
                   `mask_tokens` (soft-masked repeats `softmask_weight`, PlantCaduceus 0.1):
                   sum(w * ce) / sum(w), as Caduceus's weighted_cross_entropy.
    `masked_bits`  the reported figure: -log2 P(target) with the softmax over A, C, G, T only,
                   unweighted, summed over the chosen positions (divide by the count for masked
                   bits per base). Comparable with the two-sided k-mer baseline, which predicts
                   over the four bases only, and with MLM_LLR's softmax.

Variant scores (masked models, `masked_log_probs(ids (B, L)) -> (B, L, 4)`):
    `mlm_llr`      PlantCaduceus's zero-shot score: one window of `context` tokens around each
                   DISTINCT variant position (all ALTs there share it), the variant at index
                   `window_centre(context)` = (context - 1) // 2 (512 -> 255: the left of the
                   two middle positions; odd lengths the exact middle), N past a contig end,
                   the variant token replaced by MASK; score = log p(alt) - log p(ref), softmax
                   over A, C, G, T. strands="both": the mean with the reverse-complement window
                   (the variant at context - 1 - centre, complemented bases).
    `unmasked_llr` an approximation (the "wild-type marginal"): no mask, the model sees the
                   reference base it scores, so scores are biased towards the reference and are
                   not interchangeable with MLM_LLR. One forward per tile of the contig that holds
                   a variant, every SNV of the tile read off it: tiles of `context` tokens every
                   `stride` (default context // 2) bases, a position read from the tile whose
                   middle `stride` bases hold it, so it has >= (context - stride) // 2 tokens of
                   context on each side.
Positions are 0-based on the contig token array (mamba-dna ids, uint8). What to do with a
variant whose reference base is N or disagrees with the contig is the caller's (counted
statuses); the results carry `ref_is_n` and `ref_mismatch` for that, and NaN scores where the
REF or ALT is not one of A, C, G, T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.tokenizer import BASES, MASK, A, N, encode, reverse_complement

IGNORE = -100  # target value of positions that are not chosen (torch's ignore_index)
LN2 = math.log(2.0)
PLANTCADUCEUS_CONTEXT = 512  # the window PlantCaduceus's zero-shot scorer uses


# ============================================================================ masking


@dataclass
class MaskedBatch:
    """One masked batch (all tensors (B, L) on the device of the input ids)."""

    input_ids: torch.Tensor  # (B, L) int64: the corrupted tokens the model reads
    targets: torch.Tensor  # (B, L) int64: original token at chosen positions, IGNORE elsewhere
    weights: torch.Tensor  # (B, L) float32: 1 (softmask_weight if lower-case) at chosen, else 0

    @property
    def chosen(self) -> torch.Tensor:
        """(B, L) bool: the positions the loss is computed on."""
        return self.targets != IGNORE

    @property
    def n_targets(self) -> int:
        return int(self.chosen.sum())


def mask_tokens(
    ids,
    generator: torch.Generator,
    softmask=None,
    *,
    mask_prob: float = 0.15,
    mask_token_frac: float = 0.8,
    random_token_frac: float = 0.1,
    softmask_weight: float = 1.0,
) -> MaskedBatch:
    """Caduceus MLM masking of token ids (B, L) (numpy or torch, any device).

    `softmask` (B, L) bool marks lower-case (soft-masked repeat) positions; their loss weight
    is `softmask_weight`. Random draws come from `generator` on its own device (a CPU
    generator gives the same masks on every device) and are moved to the ids' device.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ConfigError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if not (0.0 <= mask_token_frac and 0.0 <= random_token_frac and mask_token_frac + random_token_frac <= 1.0):
        raise ConfigError(
            f"mask_token_frac ({mask_token_frac}) and random_token_frac ({random_token_frac}) "
            "must be >= 0 and sum to at most 1"
        )
    if not softmask_weight >= 0.0:
        raise ConfigError(f"softmask_weight must be >= 0, got {softmask_weight}")
    ids = torch.as_tensor(ids).long()  # (B, L)
    if ids.ndim != 2:
        raise ValueError(f"mask_tokens expects (B, L) ids, got shape {tuple(ids.shape)}")
    dev, gdev = ids.device, generator.device
    # Three fixed-size draws per call, independent of the tokens: the stream stays in step.
    u_choose = torch.rand(ids.shape, generator=generator, device=gdev).to(dev)  # (B, L)
    u_action = torch.rand(ids.shape, generator=generator, device=gdev).to(dev)  # (B, L)
    rand_base = torch.randint(0, 4, ids.shape, generator=generator, device=gdev).to(dev) + A  # (B, L)
    eligible = (ids >= A) & (ids < A + 4)  # A/C/G/T only: N, PAD, BOS, EOS, MASK never targets
    chosen = eligible & (u_choose < mask_prob)
    to_mask = chosen & (u_action < mask_token_frac)
    to_rand = chosen & (u_action >= mask_token_frac) & (u_action < mask_token_frac + random_token_frac)
    inp = torch.where(to_mask, torch.full_like(ids, MASK), ids)
    inp = torch.where(to_rand, rand_base, inp)
    targets = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    w = chosen.float()  # (B, L)
    if softmask is not None:
        sm = torch.as_tensor(softmask, device=dev).bool()
        if sm.shape != ids.shape:
            raise ValueError(f"softmask shape {tuple(sm.shape)} differs from ids {tuple(ids.shape)}")
        w = torch.where(sm, w * softmask_weight, w)
    return MaskedBatch(input_ids=inp, targets=targets, weights=w)


# ============================================================================ loss, bits


def mlm_loss(logits: torch.Tensor, batch: MaskedBatch) -> tuple[torch.Tensor, int]:
    """Training loss: weighted cross-entropy (nats) over the full vocabulary at the chosen
    positions, sum(w * ce) / sum(w); returns (loss, number of chosen positions).

    logits (B, L, V) in any float dtype (computed in fp32). With no chosen position (or all
    weights 0) the loss is 0 with the graph kept, so a step can still run.
    """
    B, L, V = logits.shape
    ce = F.cross_entropy(
        logits.float().reshape(B * L, V), batch.targets.reshape(-1), ignore_index=IGNORE, reduction="none"
    )  # (B*L,), 0 where ignored
    w = batch.weights.reshape(-1).to(ce.dtype)  # (B*L,)
    # no device sync: with no weight the numerator is 0 too, so the clamp gives 0, not NaN
    return (ce * w).sum() / w.sum().clamp_min(1e-12), batch.n_targets


def acgt_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, L, V) in mamba-dna ids -> log-softmax over A, C, G, T only (B, L, 4) fp32."""
    return torch.log_softmax(logits[..., A : A + 4].float(), dim=-1)


def masked_bits(log_probs4: torch.Tensor, batch: MaskedBatch) -> tuple[float, int]:
    """(sum of -log2 P(target) over the chosen positions, their count); unweighted.

    log_probs4 (B, L, 4): log-probabilities over A, C, G, T (a masked model's
    `masked_log_probs(batch.input_ids)` or `acgt_log_probs(logits)`). Masked bits per base =
    the summed first value / the summed second over the evaluation batches.
    """
    chosen = batch.chosen  # (B, L)
    t = (batch.targets - A).clamp(0, 3)  # (B, L) 0..3 (garbage where not chosen)
    lp = torch.as_tensor(log_probs4).to(chosen.device).float()
    picked = lp.gather(-1, t.unsqueeze(-1)).squeeze(-1)  # (B, L)
    return float(-picked[chosen].double().sum()) / LN2, int(chosen.sum())


# ============================================================================ variant windows


def window_centre(context: int) -> int:
    """0-based index of the variant in a window of `context` tokens: (context - 1) // 2."""
    if context < 1:
        raise ConfigError(f"--context must be >= 1, got {context}")
    return (context - 1) // 2


def windows_at(contig: np.ndarray, starts: np.ndarray, context: int) -> np.ndarray:
    """Windows contig[s : s + context] for each start (may reach past either end: N there).

    contig (n,) uint8 ids; starts (m,) int -> (m, context) uint8.
    """
    contig = np.asarray(contig, dtype=np.uint8).reshape(-1)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    idx = starts[:, None] + np.arange(context, dtype=np.int64)[None, :]  # (m, context)
    inside = (idx >= 0) & (idx < contig.size)
    out = np.full(idx.shape, N, dtype=np.uint8)
    out[inside] = contig[idx[inside]]
    return out


def variant_windows(contig: np.ndarray, positions, context: int = PLANTCADUCEUS_CONTEXT, mask: bool = True):
    """One window per position: (m, context) uint8 with position p at window_centre(context),
    N past the contig ends, and the centre replaced by MASK when `mask`."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    c = window_centre(context)
    w = windows_at(contig, positions - c, context)
    if mask:
        w[:, c] = MASK
    return w


def _as_base_ids(x, what: str, m: int) -> np.ndarray:
    """REF/ALT given as token ids or one-letter strings -> (m,) int64 ids."""
    if isinstance(x, str):
        x = list(x)
    arr = np.asarray(x)
    if arr.dtype.kind in "US":  # strings: encode each (invalid letters -> N)
        arr = np.array([encode(str(s))[0] if len(str(s)) == 1 else N for s in arr.reshape(-1)], dtype=np.int64)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size != m:
        raise ValueError(f"{what}: {arr.size} values for {m} positions")
    return arr


def _check_positions(contig: np.ndarray, positions) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.int64).reshape(-1)
    bad = (pos < 0) | (pos >= contig.size)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"variant position {int(pos[i])} (0-based, item {i}) is outside the contig of "
            f"{contig.size:,} bases ({int(bad.sum())} outside in total)"
        )
    return pos


def _chunk(batch_size: int) -> int:
    """Windows built at once by the scorers: a whole number of batches, ~4096 windows."""
    return max(1, int(batch_size)) * max(1, 4096 // max(1, int(batch_size)))


def _model_device(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def read_log_probs(
    model, windows: np.ndarray, win_idx, offsets, *, strands: str = "forward", batch_size: int = 64, device=None
) -> tuple[np.ndarray, int]:
    """log P over A, C, G, T at windows[win_idx[r], offsets[r]] -> ((r, 4) float32, calls).

    Each window goes through `model.masked_log_probs` once, in batches of `batch_size`; any
    number of reads come off it (only the read rows are kept, so memory is O(reads)).
    strands="both": the reverse-complement windows too, read at context - 1 - offset with
    the columns complemented back to the forward strand; the result is the mean of the two
    strands' log-probabilities (a difference of it is the mean of the two strands' scores).
    """
    if strands not in ("forward", "both"):
        raise ConfigError(f"strands must be 'forward' or 'both', not {strands!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    windows = np.asarray(windows, dtype=np.uint8)  # (n, context)
    win_idx = np.asarray(win_idx, dtype=np.int64).reshape(-1)  # (r,)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)  # (r,)
    n, context = windows.shape
    r = win_idx.size
    if strands == "both":
        windows = np.concatenate([windows, reverse_complement(windows)], axis=0)  # (2n, context)
        win_idx = np.concatenate([win_idx, win_idx + n])
        offsets = np.concatenate([offsets, context - 1 - offsets])
    order = np.argsort(win_idx, kind="stable")  # reads grouped by window, window order
    sorted_win = win_idx[order]
    dev = _model_device(model, device)
    out = np.empty((win_idx.size, 4), dtype=np.float32)
    calls = 0
    with torch.inference_mode():
        for s in range(0, windows.shape[0], batch_size):
            e = min(s + batch_size, windows.shape[0])
            lo, hi = np.searchsorted(sorted_win, [s, e])
            if lo == hi:
                continue  # no read in these windows
            ids = torch.from_numpy(windows[s:e].astype(np.int64)).to(dev)  # (b, context)
            lp = model.masked_log_probs(ids)  # (b, context, 4)
            calls += 1
            sel = order[lo:hi]
            wi = torch.from_numpy(win_idx[sel] - s).to(lp.device)
            off = torch.from_numpy(offsets[sel]).to(lp.device)
            out[sel] = lp[wi, off].float().cpu().numpy()  # (reads, 4)
    if strands == "both":
        # the RC window's column for base b is the forward strand's complement: ACGT -> TGCA
        out = 0.5 * (out[:r] + out[r:, ::-1])
    return out, calls


@dataclass
class LlrResult:
    """Per-variant scores (input order) and what the caller needs to give statuses."""

    score: np.ndarray  # (m,) float32 log p(alt) - log p(ref); NaN if REF or ALT is not A/C/G/T
    log_probs: np.ndarray  # (m, 4) float32 log P(A, C, G, T) at the variant (forward strand)
    ref_is_n: np.ndarray  # (m,) bool: the contig base at the position is not A/C/G/T
    ref_mismatch: np.ndarray  # (m,) bool: the given REF differs from the contig base
    n_windows: int  # windows the model read (both strands count twice)
    n_calls: int  # batched forward calls


def _prepare(contig, positions, refs, alts):
    """Checked inputs: (contig (n,) uint8, pos (m,), ref (m,), alt (m,), distinct positions
    (u,) sorted, inverse (m,) index of each variant's position among them)."""
    contig = np.asarray(contig, dtype=np.uint8).reshape(-1)
    pos = _check_positions(contig, positions)
    ref, alt = _as_base_ids(refs, "refs", pos.size), _as_base_ids(alts, "alts", pos.size)
    uniq, inverse = np.unique(pos, return_inverse=True)  # one forward per distinct position
    return contig, pos, ref, alt, uniq, inverse.reshape(-1)


def _finish(contig, pos, ref, alt, lp_rows, inverse, n_windows, n_calls) -> LlrResult:
    lp = lp_rows[inverse]  # (m, 4)
    rc, ac = ref - A, alt - A
    ok = (rc >= 0) & (rc < 4) & (ac >= 0) & (ac < 4)
    score = np.full(pos.size, np.nan, dtype=np.float32)
    i = np.flatnonzero(ok)
    score[i] = lp[i, ac[i]] - lp[i, rc[i]]
    here = contig[pos].astype(np.int64)
    ref_is_n = ~np.isin(here, BASES)
    return LlrResult(score, lp, ref_is_n, here != ref, n_windows, n_calls)


def mlm_llr(
    model,
    contig: np.ndarray,
    positions,
    refs,
    alts,
    *,
    context: int = PLANTCADUCEUS_CONTEXT,
    strands: str = "forward",
    batch_size: int = 64,
    device=None,
) -> LlrResult:
    """MLM_LLR of SNVs on one contig (see the module docstring): one masked window per
    distinct position, batched; positions 0-based; refs/alts token ids or letters."""
    contig, pos, ref, alt, uniq, inverse = _prepare(contig, positions, refs, alts)
    c = window_centre(context)
    rows = np.empty((uniq.size, 4), np.float32)
    calls = 0
    step = _chunk(batch_size)
    for s in range(0, uniq.size, step):  # windows built a chunk at a time: O(chunk) memory
        win = variant_windows(contig, uniq[s : s + step], context, mask=True)  # (u, context)
        u = win.shape[0]
        rows[s : s + u], n = read_log_probs(
            model, win, np.arange(u), np.full(u, c), strands=strands, batch_size=batch_size, device=device
        )
        calls += n
    n_win = uniq.size * (2 if strands == "both" else 1)
    return _finish(contig, pos, ref, alt, rows, inverse, n_win, calls)


def unmasked_llr(
    model,
    contig: np.ndarray,
    positions,
    refs,
    alts,
    *,
    context: int = PLANTCADUCEUS_CONTEXT,
    stride: int | None = None,
    strands: str = "forward",
    batch_size: int = 64,
    device=None,
) -> LlrResult:
    """The unmasked approximation of MLM_LLR (see the module docstring): one forward per tile
    of `context` tokens that holds a variant, every variant of the tile read off it."""
    stride = context // 2 if stride is None else int(stride)
    if not 1 <= stride <= context:
        raise ConfigError(f"stride must be in 1..context ({context}), got {stride}")
    contig, pos, ref, alt, uniq, inverse = _prepare(contig, positions, refs, alts)
    margin = (context - stride) // 2
    tiles, u_tile = np.unique(uniq // stride, return_inverse=True)  # tiles whose middle holds a variant
    starts = tiles * stride - margin
    offsets = uniq - starts[u_tile]  # in margin .. margin + stride - 1
    rows = np.empty((uniq.size, 4), np.float32)
    calls = 0
    step = _chunk(batch_size)
    for s in range(0, tiles.size, step):  # tiles built a chunk at a time: O(chunk) memory
        win = windows_at(contig, starts[s : s + step], context)  # (t, context), N past the ends
        lo, hi = np.searchsorted(u_tile, [s, s + step])  # u_tile is sorted (uniq is)
        rows[lo:hi], n = read_log_probs(
            model, win, u_tile[lo:hi] - s, offsets[lo:hi], strands=strands, batch_size=batch_size, device=device
        )
        calls += n
    n_win = tiles.size * (2 if strands == "both" else 1)
    return _finish(contig, pos, ref, alt, rows, inverse, n_win, calls)
