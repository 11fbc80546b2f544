"""The masked-model path for one contig: MLM_LLR (or its unmasked approximation) per SNV and
the EMB window distance for any allele (how and why: the package docstring, "Masked models")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mamba_dna.checks import NONFINITE
from mamba_dna.mlm import PLANTCADUCEUS_CONTEXT, mlm_llr, unmasked_llr, window_centre, windows_at
from mamba_dna.scorer import call_tokens, device_of

NOT_SNV = "not_snv_masked_model"  # an indel / MNV with a masked model and no --scores emb
NON_FINITE = NONFINITE  # the model gave NaN / inf for a score that was asked for
COLUMNS = ("mlm_llr", "llr", "emb_cos", "emb_l2")


def masked_batch(scorer, context: int, batch_size: int | None) -> int:
    """Windows per model call: `batch_size`, or the scorer's cache-sized call over `context`."""
    return int(batch_size) if batch_size else max(1, call_tokens(scorer) // context)


def score_contig_masked(scorer, x: np.ndarray, starts: Sequence[int], refs: Sequence[np.ndarray],
                        alts: Sequence[np.ndarray], *, scores: Sequence[str], strands: str,
                        context: int | None = None, emb_layer: int | None = None,
                        batch_size: int | None = None) -> dict:
    """Every variant of one contig with a masked scorer.

    x (L,) uint8 contig ids; starts 0-based; refs/alts uint8 id arrays (already checked
    against the contig). Returns {'mlm_llr','llr','emb_cos','emb_l2': (n,) float64 (NaN where
    not scored), 'edge': (n,) bool (the window reaches past a contig end: N there),
    'status': list of None (scored) or the reason it was not}.
    """
    n = len(starts)
    ctx = int(context or PLANTCADUCEUS_CONTEXT)
    c = window_centre(ctx)
    L = int(x.size)
    bs = masked_batch(scorer, ctx, batch_size)
    out = {k: np.full(n, np.nan) for k in COLUMNS}
    pos = np.asarray(starts, dtype=np.int64)  # (n,)
    span = np.array([max(r.size, a.size) for r, a in zip(refs, alts, strict=True)], dtype=np.int64)
    out["edge"] = (pos - c < 0) | (pos - c + ctx + span - 1 > L)
    snv = np.array([r.size == 1 and a.size == 1 for r, a in zip(refs, alts, strict=True)], dtype=bool)
    status: list[str | None] = [None] * n
    si = np.flatnonzero(snv)
    if si.size:
        ref1 = np.array([refs[k][0] for k in si], dtype=np.int64)
        alt1 = np.array([alts[k][0] for k in si], dtype=np.int64)
        for col, fn in (("mlm_llr", mlm_llr), ("llr", unmasked_llr)):
            if ("mlm" if col == "mlm_llr" else col) not in scores:
                continue
            res = fn(scorer, x, pos[si], ref1, alt1, context=ctx, strands=strands, batch_size=bs)
            out[col][si] = res.score
            for j in np.flatnonzero(res.ref_is_n | res.ref_mismatch):  # backstops: the caller checks REF
                status[si[j]] = "ambiguous_base" if res.ref_is_n[j] else "ref_mismatch"
    if "emb" in scores:
        cos, l2 = emb_distances(scorer, x, pos, refs, alts, context=ctx, layer=emb_layer, batch_size=bs)
        out["emb_cos"], out["emb_l2"] = cos, l2
    asked = [col for col, sc in (("mlm_llr", "mlm"), ("llr", "llr")) if sc in scores]
    for k in range(n):
        if status[k] is not None:
            continue
        want = (asked if snv[k] else []) + (["emb_cos", "emb_l2"] if "emb" in scores else [])
        if not want:
            status[k] = NOT_SNV
        elif not all(np.isfinite(out[col][k]) for col in want):
            status[k] = NON_FINITE
    for k in range(n):
        if status[k] is not None:
            for col in COLUMNS:
                out[col][k] = np.nan
    out["status"] = status
    return out


def allele_windows(x: np.ndarray, pos: np.ndarray, refs, alts, context: int) -> tuple[np.ndarray, np.ndarray]:
    """REF and ALT haplotype windows (n, context) uint8: `window_centre(context)` bases of
    the contig left of the variant, the allele, then the contig after the REF allele; N past
    a contig end. The two share their left flank; they differ from the allele on."""
    c = window_centre(context)
    ref_w = windows_at(x, pos - c, context)  # (n, context)
    alt_w = ref_w.copy()
    for k, (p, r, a) in enumerate(zip(pos, refs, alts, strict=True)):
        keep = context - c - a.size  # contig bases after the ALT allele that fit
        tail = windows_at(x, [int(p) + r.size], max(keep, 0))[0] if keep > 0 else np.zeros(0, np.uint8)
        row = np.concatenate([ref_w[k, :c], a, tail])[:context]
        alt_w[k] = row
    return ref_w, alt_w


def emb_distances(scorer, x, pos, refs, alts, *, context: int, layer: int | None,
                  batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(EMB_COS, EMB_L2) per variant: 1 - cos and the L2 distance between the REF and the ALT
    window's hidden states (`scorer.hidden(ids, layer, rc_average=True)`: strand-symmetric),
    each mean-pooled over the whole window. (n,) float64 each."""
    ref_w, alt_w = allele_windows(x, np.asarray(pos, np.int64), refs, alts, context)
    _, first, inv = np.unique(np.asarray(pos, np.int64), return_index=True, return_inverse=True)  # one REF per position
    r = _pooled(scorer, ref_w[first], layer, batch_size)[inv.reshape(-1)]  # (n, d)
    a = _pooled(scorer, alt_w, layer, batch_size)  # (n, d)
    cos = 1.0 - (r * a).sum(1) / np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(a, axis=1), 1e-300)
    return cos, np.linalg.norm(a - r, axis=1)


def _pooled(scorer, windows: np.ndarray, layer: int | None, batch_size: int) -> np.ndarray:
    """Mean over positions of the strand-symmetric hidden states: (m, context) -> (m, d) float64."""
    dev = device_of(scorer)
    rows = []
    with torch.inference_mode():
        for s in range(0, windows.shape[0], batch_size):
            ids = torch.from_numpy(windows[s : s + batch_size].astype(np.int64)).to(dev)  # (b, context)
            h = scorer.hidden(ids, layer=layer, rc_average=True)  # (b, context, d)
            rows.append(h.double().mean(1).cpu().numpy())  # (b, d)
    return np.concatenate(rows, 0) if rows else np.zeros((0, 0))
