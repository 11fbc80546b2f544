"""VCF records -> per-ALT results: which records this run takes (shard, region), contig
groups, REF checks and skip reasons, and the counts a run reports (`ScoreResult`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from mamba_dna import log
from mamba_dna.checks import NONFINITE
from mamba_dna.errors import InputError
from mamba_dna.genome import parse_region
from mamba_dna.io.vcf import VcfRecord, alt_skip_reason, count_records
from mamba_dna.pipelines.score.config import SCORE_COLUMNS, ScoreConfig
from mamba_dna.pipelines.score.fastpath import score_contig
from mamba_dna.pipelines.score.masked import score_contig_masked
from mamba_dna.pipelines.score.scorers import is_masked, masked_strands
from mamba_dna.rankshard import parse_shard
from mamba_dna.tokenizer import N, encode


@dataclass
class ScoreResult:
    """What one `score` run did (also logged as one line)."""

    records: int = 0
    alts: int = 0
    scored: int = 0
    edge: int = 0
    skipped: Counter = field(default_factory=Counter)
    on_n: int = 0  # ALTs whose REF span is N in the reference (skipped: ref_mismatch / ambiguous_base)
    seconds: float = 0.0

    def line(self) -> str:
        sk = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"scored {self.scored:,} of {self.alts:,} ALT alleles in {self.records:,} records "
                f"({self.edge:,} near a contig end, status 'edge'); skipped: {sk}; {self.seconds:.1f}s")


@dataclass
class Selection:
    """The records this run scores: a shard's block of record indices and a region."""

    lo: int = 0
    hi: int | None = None  # record indices [lo, hi) in input order
    region: tuple[str, int, int] | None = None  # FASTA name, start0, end0

    @classmethod
    def of(cls, cfg: ScoreConfig, resolve) -> Selection:
        sel = cls()
        shard_i, shard_n = parse_shard(cfg.shard)
        if shard_n > 1:
            total = count_records(cfg.vcf)
            sel.lo, sel.hi = total * shard_i // shard_n, total * (shard_i + 1) // shard_n
            log.info(f"shard {shard_i}/{shard_n}: records {sel.lo:,}..{sel.hi:,} of {total:,}")
        region = parse_region(cfg.region, [*resolve.genome.names, *resolve.aliases])  # MT:100 is malformed
        if region is not None:
            rname = resolve(region[0])
            if rname is None:
                raise InputError(resolve.missing_message(region[0], f"--region {cfg.region}"))
            sel.region = (rname, region[1], region[2])
        return sel


def contig_groups(cfg: ScoreConfig, reader, resolve, sel: Selection,
                  unknown: set[str]) -> Iterator[tuple[list[VcfRecord], str | None]]:
    """Consecutive selected records of one VCF contig -> (records, FASTA name or None).

    Contigs missing from the FASTA are added to `unknown` (warned once; an error with --strict).
    """
    group: list[VcfRecord] = []
    cur: str | None = None
    cur_fasta: str | None = None
    seen: set[str] = set()
    for rec in reader:
        if rec.index < sel.lo:
            continue
        if sel.hi is not None and rec.index >= sel.hi:
            break
        fasta_name = resolve(rec.chrom)
        if fasta_name is None:
            where = f"{cfg.vcf}:{rec.line}"
            if cfg.strict:
                raise InputError(resolve.missing_message(rec.chrom, where))
            if rec.chrom not in unknown:
                unknown.add(rec.chrom)
                log.info("warning: " + resolve.missing_message(rec.chrom, where)
                         + "; its records are written unscored (status unknown_contig)")
        r = sel.region
        if r is not None and (fasta_name != r[0] or not r[1] <= rec.start < r[2]):
            continue
        if rec.chrom != cur:
            if group:
                yield group, cur_fasta
                group = []
            if rec.chrom in seen:
                log.info(f"{cfg.vcf}:{rec.line}: contig {rec.chrom} appears again (unsorted VCF); "
                         "it is streamed again, results stay correct")
            seen.add(rec.chrom)
            cur, cur_fasta = rec.chrom, fasta_name
        group.append(rec)
    if group:
        yield group, cur_fasta


def score_records(cfg: ScoreConfig, scorer, genome, group: list[VcfRecord], fasta_name: str | None,
                  result: ScoreResult) -> list[list[dict]]:
    """Per record, per ALT: {'mlm_llr','llr','dll','dll_norm','emb_cos','emb_l2','status'} for one
    contig's records (causal scorers: the fast path; masked ones: masked.py)."""
    blank = dict.fromkeys(c for cs in SCORE_COLUMNS.values() for c in cs)
    results = [[{**blank, "status": "ok"} for _ in rec.alts] for rec in group]
    result.records += len(group)
    result.alts += sum(len(r.alts) for r in group)
    if fasta_name is None:
        for res in results:
            for r in res:
                r["status"] = "unknown_contig"
        result.skipped["unknown_contig"] += sum(len(r) for r in results)
        return results
    x, _ = genome.tokens(fasta_name)  # (L,) uint8: the whole contig
    starts, refs, alts, where = _scorable(cfg, genome, x, group, fasta_name, results, result)
    if not where:
        return results
    if is_masked(scorer):
        _masked(cfg, scorer, x, starts, refs, alts, where, results, result)
        return results
    sc = score_contig(scorer, x, starts, refs, alts, want_llr="llr" in cfg.scores,
                      want_dll="dll" in cfg.scores, want_emb="emb" in cfg.scores,
                      emb_layer=cfg.emb_layer, window=cfg.window, snapshot_every=cfg.snapshot_every,
                      chunk=cfg.chunk, batch_size=cfg.batch_size, context=cfg.context)
    bad = _nonfinite(cfg, sc, refs, alts, int(x.size))  # (n,) a NaN/Inf where a score is defined
    skip = [NONFINITE if b else None for b in bad]  # never "ok": counted, no value written
    _fill(where, results, result, sc, [c for c in blank if c in sc], skip)  # mlm_llr: masked only
    return results


def _fill(where, results, result, sc: dict, columns, skip) -> None:
    """Write each scored ALT's values (NaN -> empty) and status into `results` and count it:
    `skip[k]` is the status of a variant given no values (None: scored)."""
    for k, (gi, ai) in enumerate(where):
        r = results[gi][ai]
        if skip[k] is not None:
            r["status"] = skip[k]
            result.skipped[skip[k]] += 1
            continue
        for c in columns:
            v = float(sc[c][k])
            r[c] = None if math.isnan(v) else v
        if sc["edge"][k]:
            r["status"] = "edge"
            result.edge += 1
        result.scored += 1


def _masked(cfg, scorer, x, starts, refs, alts, where, results, result) -> None:
    """Fill `results` for a masked scorer (MLM_LLR / unmasked LLR / EMB; see masked.py)."""
    sc = score_contig_masked(scorer, x, starts, refs, alts, scores=cfg.scores, strands=masked_strands(scorer),
                             context=cfg.context, emb_layer=cfg.emb_layer, batch_size=cfg.batch_size)
    _fill(where, results, result, sc, ("mlm_llr", "llr", "emb_cos", "emb_l2"), sc["status"])


def _nonfinite(cfg: ScoreConfig, sc: dict, refs, alts, L: int) -> np.ndarray:
    """bool (n,): variants whose asked-for scores hold +-Inf, or NaN where the score is
    defined (LLR: SNVs of a contig longer than 1 base; DLL and EMB: every variant), i.e. the model's output was not
    finite."""
    n = len(refs)
    snv = np.array([L > 1 and r.size == 1 and a.size == 1 for r, a in zip(refs, alts, strict=True)], bool)
    bad = np.zeros(n, bool)
    for name, cols in SCORE_COLUMNS.items():
        if name not in cfg.scores:
            continue
        for c in cols:
            v = np.asarray(sc[c], np.float64)  # (n,)
            defined = snv if c == "llr" else np.ones(n, bool)
            bad |= np.isinf(v) | (np.isnan(v) & defined)
    return bad


def _scorable(cfg, genome, x, group, fasta_name, results, result):
    """The ALTs that can be scored -> (starts, REF ids, ALT ids, (record, alt) index); the
    others get their skip reason in `results` (REF mismatch: an error with --strict)."""
    L = int(x.size)
    starts, refs, alts, where = [], [], [], []
    for gi, rec in enumerate(group):
        ref_ids = encode(rec.ref)
        reason = None
        if (x[rec.start : rec.start + ref_ids.size] == N).any():
            result.on_n += len(rec.alts)  # for the summary (the reason stays one of those below)
        if rec.start + len(rec.ref) > L:
            reason = "outside_contig"
        elif not np.array_equal(x[rec.start : rec.start + ref_ids.size], ref_ids):
            reason = "ref_mismatch"
            if cfg.strict:
                got = genome.fetch(fasta_name, rec.start, rec.start + ref_ids.size).decode().upper()
                raise InputError(
                    f"{cfg.vcf}:{rec.line}: REF {rec.ref} at {rec.chrom}:{rec.pos} does not match the "
                    f"reference ({got} in {fasta_name})",
                    hint="drop --strict to flag such records in the output instead",
                )
        elif (ref_ids == N).any():
            reason = "ambiguous_base"
        for ai, alt in enumerate(rec.alts):
            why = reason or alt_skip_reason(alt)
            if why is None:
                alt_ids = encode(alt)
                if (alt_ids == N).any():
                    why = "ambiguous_base"
                elif alt.upper() == rec.ref:
                    why = "alt_equals_ref"
            if why is not None:
                results[gi][ai]["status"] = why
                result.skipped[why] += 1
                continue
            starts.append(rec.start)
            refs.append(ref_ids)
            alts.append(alt_ids)
            where.append((gi, ai))
    return starts, refs, alts, where
