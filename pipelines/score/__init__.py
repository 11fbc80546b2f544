"""`mamba-dna score`: zero-shot variant effect scores from a language model.

Reads top to bottom: setup (scorer, reference, VCF, shard/region) -> run (contig by contig,
one streaming pass per strand) -> save (VCF with INFO fields or TSV, in input order).

Scores, per ALT allele (sign: negative = the ALT is less likely than the REF):

LLR  SNVs only. log P(alt) - log P(ref) at the variant position given everything upstream
     of it on the contig, averaged over both strands (the reverse-complement pass supplies
     the downstream context). One forward pass over the contig and one over its reverse
     complement give every SNV's LLR.
DLL  Any REF/ALT (SNVs, MNVs, indels). On each strand: total log-likelihood of the
     ALT allele followed by the next W = window // 2 reference bases, minus the same for the
     REF allele, both given the full upstream context; averaged over the two strands, so the
     window spans W bases each side of the variant. Upstream bases are identical for REF and
     ALT and cancel exactly in a causal model, so they are not re-scored.
     Length: for indels the two alleles contribute a different number of terms (len(ALT) + W
     vs len(REF) + W). DLL is the raw difference (what "likelihood of the haplotype" means);
     DLL_NORM = mean log-likelihood per scored base, ALT minus REF, which removes the
     allele-length term (for SNVs DLL_NORM = DLL / (W + 1)).
EMB  Network models only (`--scores llr,dll,emb`; a markov:K scorer has no embeddings and
     is refused). Embedding distance between the REF and the ALT haplotype at layer K
     (`--emb-layer`, as `MambaLM.hidden`: None/"final" = after the final norm, what the LM
     head reads; k = the residual stream after k blocks, 0 = token embeddings, negative from
     the end). On each strand the hidden states h_t (h_t has read base t) are mean-pooled over
     the allele and the W = window // 2 bases downstream of it:
         r = mean(h_ref[q : q + len(REF) + W]),  a = mean(h_alt[q : q + len(ALT) + W])
     (the two haplotypes' own coordinates; the pools have different lengths for indels).
     Positions before the variant are excluded: in a causal model their hidden states are
     identical for REF and ALT (distance 0), so including them would only dilute the score
     by an arbitrary upstream length. Two fields:
         EMB_COS = 1 - cos(r, a)   in [0, 2];   EMB_L2 = ||a - r||_2   (units of h)
     Reverse complement: the distance is computed on each strand with that strand's
     downstream window and the two distances are averaged (as LLR/DLL), so together they see
     W bases each side of the variant; the pooled vectors are not averaged across strands
     (the two strands' states describe different contexts). Sign: a distance is >= 0 and
     larger = more different; `score eval` ranks larger distances as more damaging.
     Cost: none beyond DLL: the ALT re-run's hidden states are read at layer K on the way
     (a forward hook, the same call), and the REF pool comes from a running sum of the
     reference pass's hidden states (float64 prefix sums at each variant's window ends).

How it is fast: the recurrence is reused. The reference pass streams the contig in chunks
with carried state (memory does not grow with the contig), gathers the LLR rows and the
running sum of reference log-probabilities (which give each variant's REF term), and
snapshots the state at the first variant of each cluster of variants (a new snapshot every
`--block` bases along a dense run, `snapshot_every` inside: the pass is cut there, one
extra call each). Each ALT then re-runs only `x[snapshot:pos] + ALT + W downstream bases`
from its snapshot (prefix < snapshot_every, none for a lone variant), batched and ordered
by position so a batch pads little. The
re-run's tokens are the floor of an exact method: the ALT side of W bases per strand, against
the naive method's REF and ALT windows of 2W + 1 bases. The naive method (`naive_scores`,
used by the tests and the benchmark) runs whole sequences per variant.

Variants whose context is cut by a contig end (no upstream base on one strand, or fewer than
W bases downstream) are scored with what exists and get status `edge`.

Long contigs with few variants: `--context C` starts each strand's pass C bases (rounded
down to a snapshot boundary) before the first variant of the contig instead of at the contig end; every
variant still has >= C bases of upstream context. (The BRCA1 set: 3,893 SNVs within 79 kb of
a 1.175 Mb contig.)

Sharding: `--shard i/n` takes the i-th of n contiguous blocks of records (input order);
`--region chrom:start-end` (1-based, inclusive) keeps the variants in it. Every shard streams
its contigs from the contig ends, so merged shards equal a single run exactly (with
`--context`, a shard's pass starts before *its* first variant, so a network model's scores
can differ from a single run in the last digits); `merge_outputs` (`mamba-dna score merge`)
joins shard outputs in shard order.

Masked models (`is_causal = False`: CaduceusLM, the two-sided k-mer `kmer2:K|auto`), masked.py:
MLM_LLR  (`--scores auto` = mlm) SNVs only. PlantCaduceus's zero-shot score: per contig one
     window of C = `--context` (default 512) tokens per DISTINCT position (all ALTs there share
     it), the variant at 0-based (C - 1) // 2 (255) and replaced by MASK, N past a contig end
     (status `edge`); log p(alt) - log p(ref) with the softmax over A, C, G, T
     (`mamba_dna.mlm.mlm_llr`), windows batched (`--batch-size`; auto: ~2M activations per
     call). Caduceus-Ph: the mean of the two strands (the reverse-complement window too);
     Caduceus-PS (rcps) and kmer2 are strand-equivariant: one pass. Column `mlm_llr`, INFO
     MLM_LLR.
LLR  (`--scores llr`) an APPROXIMATION of MLM_LLR (`mlm.unmasked_llr`): no mask, C-token tiles
     every C // 2 bases that hold a variant, every SNV read off them; the model sees the REF
     base it scores, so scores lean towards the REF and are not interchangeable with MLM_LLR.
EMB  (`--scores emb`, network models) the REF window (the contig, variant at (C - 1) // 2)
     and the ALT window (same left flank, the ALT allele, then the contig after the REF allele,
     cut to C), each through `hidden(ids, --emb-layer, rc_average=True)` (strand-symmetric)
     and mean-pooled over the whole window: EMB_COS = 1 - cos, EMB_L2 as above. It is the
     only score of indels and MNVs; without it they get status `not_snv_masked_model`.
DLL is refused (it reads a haplotype left to right: a causal model's score). A score that
comes out NaN/inf is status `nonfinite` (counted), never `ok`. `--context` longer than the
window the model was trained on (a pretrain run's seq_len, a hub name's `seqlen-131k`,
PlantCaduceus 512) is a warning, not an error: the models are recurrent. `--window`,
`--block` and `--chunk` do not apply.

Files, in the order of a run: config.py (ScoreConfig), scorers.py (--model -> a scorer;
the protocol itself: mamba_dna.scorer), records.py (VCF records -> per-ALT results),
fastpath.py (one contig, both strands), emb.py (EMB pools), masked.py (masked models),
naive.py (the reference),
formats.py (VCF/TSV rows), run.py (the pipeline), merge.py (score merge / eval).
"""

from __future__ import annotations

from mamba_dna.lazy import lazy_getattr

# public name -> the module of this package that defines it. Imported on first use, so the
# CLI can read ScoreConfig's defaults without importing torch (PEP 562).
_EXPORTS = {
    "DEFAULT_SCORES": "config", "DISTANCE_COLUMNS": "config", "SCORES": "config",
    "SCORE_COLUMNS": "config", "ScoreConfig": "config", "parse_region": "config",
    "AlleleChange": "fastpath", "score_contig": "fastpath", "snapshot_positions": "fastpath",
    "strand_scores": "fastpath",
    "evaluate_labelled": "merge", "merge_outputs": "merge", "read_scored": "merge",
    "naive_scores": "naive",
    "ScoreResult": "records",
    "run_score": "run",
    "is_masked": "scorers", "load_scorer": "scorers",
    "score_contig_masked": "masked",
}
__all__ = [*_EXPORTS, "parse_shard"]


__getattr__ = lazy_getattr(__name__, {**_EXPORTS, "parse_shard": "config"}, globals())
