"""`score` top to bottom: setup (reference, scorer, VCF, selection) -> run (contig by
contig, one streaming pass per strand) -> save (VCF/TSV rows in input order, atomically)."""

from __future__ import annotations

import time
from contextlib import nullcontext

from mamba_dna.pipelines.score.config import ScoreConfig
from mamba_dna.pipelines.score.formats import ScoredWriter
from mamba_dna.pipelines.score.records import ScoreResult, Selection, contig_groups, score_records
from mamba_dna.pipelines.score.scorers import load_scorer

from mamba_dna import log
from mamba_dna.errors import InputError
from mamba_dna.fsutil import guard_output, os_errors, output_lock, prepare_output
from mamba_dna.genome import Genome
from mamba_dna.io.vcf import ContigResolver, VcfReader, check_contig_lengths, check_info_keys, parse_aliases
from mamba_dna.scorer import HiddenTap


def run(cfg: ScoreConfig, scorer=None, progress: bool = True) -> ScoreResult:
    """Score every ALT of `cfg.vcf`; write `cfg.out`; return the counts (also logged)."""
    t0 = time.time()
    # ---- setup
    guard_output(cfg.out, [cfg.vcf, cfg.fasta, cfg.model, cfg.chrom_alias])
    genome = Genome(cfg.fasta)  # invalid bytes: refused with record and offset, as by tokenize
    resolve = ContigResolver(genome, parse_aliases(cfg.chrom_alias))
    scorer = scorer if scorer is not None else load_scorer(cfg.model, genome, cfg.device)
    if "emb" in cfg.scores:
        HiddenTap(scorer, cfg.emb_layer)  # a clear error now (Markov scorer, bad layer), not mid-run
    reader = VcfReader(cfg.vcf)
    check_contig_lengths(reader, resolve, strict=cfg.strict)
    check_info_keys(reader, cfg.tsv_info)
    selection = Selection.of(cfg, resolve)
    to_file = cfg.out != "-"
    if to_file:
        prepare_output(cfg.out)
    result, unknown = ScoreResult(), set()
    # ---- run + save: consecutive records of a contig form a group, scored in one pass per strand
    with output_lock(cfg.out) if to_file else nullcontext(), os_errors(cfg.out), \
            ScoredWriter(cfg, reader, scorer) as out, \
            log.progress("scoring", unit="records", enabled=progress) as bar:
        for group, fasta_name in contig_groups(cfg, reader, resolve, selection, unknown):
            for rec, per_alt in zip(group, score_records(cfg, scorer, genome, group, fasta_name, result),
                                    strict=True):
                out.write(rec, per_alt)
            bar.advance(len(group), note=group[0].chrom)
        if result.alts and result.skipped.get("unknown_contig", 0) == result.alts:
            # nothing matched: almost surely a naming mismatch; no output is written
            raise InputError(resolve.missing_message(sorted(unknown)[0], cfg.vcf))
    result.seconds = time.time() - t0
    _report(cfg, result)
    return result


def _report(cfg: ScoreConfig, result: ScoreResult) -> None:
    log.info(result.line())
    mism = result.skipped.get("ref_mismatch", 0)
    if mism and mism >= 0.1 * result.alts:
        log.info(f"warning: {mism:,} of {result.alts:,} REF alleles do not match {cfg.fasta}: "
                 "is it the reference (build) the VCF was called on?")
