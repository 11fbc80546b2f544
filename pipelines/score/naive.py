"""The reference: each variant scored from whole REF and ALT haplotypes (tests, benchmarks)."""

from __future__ import annotations

import math

import numpy as np
import torch

from mamba_dna.pipelines.score.emb import distances
from mamba_dna.scorer import as_tensor, device_of
from mamba_dna.tokenizer import reverse_complement


@torch.inference_mode()
def naive_scores(scorer, x: np.ndarray, start: int, ref: np.ndarray, alt: np.ndarray,
                 window: int = 2000, emb_layer: int | None = None) -> dict[str, float]:
    """Reference implementation: whole-contig passes per variant (for tests, tiny contigs).

    LLR from the full upstream sequence on each strand; DLL from the full REF and ALT
    haplotypes, summing over the allele + window // 2 downstream bases on each strand; EMB
    (scorers with `hidden`) from `scorer.hidden(haplotype, layer=emb_layer)` of both whole
    haplotypes, pooled over the allele + window // 2 downstream bases, distances averaged
    over the strands.
    """
    down = window // 2
    L = x.size
    dev = device_of(scorer)

    def lp_of(seq):
        t = torch.from_numpy(seq.astype(np.int64))[None].to(dev)
        return as_tensor(scorer.log_probs(t, None)[0])[0].double().cpu().numpy()  # (len, 4)

    def ll(seq, a, b):  # sum over targets a..b-1 (>= 1) of log P(seq_t | seq_<t)
        lp = lp_of(seq)
        t = np.arange(max(a, 1), b)
        code = seq[t].astype(np.int64) - 4
        g = code < 4
        return float(lp[t[g] - 1, code[g]].sum()), int(t.size)

    res = {}
    llrs, dlls, norms, coss, l2s = [], [], [], [], []
    for strand in (0, 1):
        if strand == 0:
            xx, p, r, a = x, start, ref, alt
        else:
            xx, p, r, a = reverse_complement(x), L - start - ref.size, reverse_complement(ref), reverse_complement(alt)
        wd = min(down, L - p - r.size)
        hap_alt = np.concatenate([xx[:p], a, xx[p + r.size :]])
        if r.size == 1 and a.size == 1 and p >= 1:
            row = lp_of(xx[:p])[p - 1]
            llrs.append(row[int(a[0]) - 4] - row[int(r[0]) - 4])
        lr, nr = ll(xx, p, p + r.size + wd)
        la, na = ll(hap_alt, p, p + a.size + wd)
        dlls.append(la - lr)
        norms.append(la / max(na, 1) - lr / max(nr, 1))
        if hasattr(scorer, "hidden"):
            def hid(seq):
                t = torch.from_numpy(seq.astype(np.int64))[None].to(dev)
                return scorer.hidden(t, layer=emb_layer)[0][0].double()  # (len, d_model)
            pr = hid(xx)[p : p + r.size + wd].mean(0)  # REF allele + downstream
            pa = hid(hap_alt)[p : p + a.size + wd].mean(0)  # ALT allele + downstream
            c, d = distances(pr, pa)
            coss.append(c)
            l2s.append(d)
    res["llr"] = float(np.mean(llrs)) if llrs else math.nan
    res["emb_cos"] = float(np.mean(coss)) if coss else math.nan
    res["emb_l2"] = float(np.mean(l2s)) if l2s else math.nan
    res["dll"] = float(np.mean(dlls))
    res["dll_norm"] = float(np.mean(norms))
    return res
