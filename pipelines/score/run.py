"""`score` top to bottom: setup (reference, scorer, VCF, selection) -> run (contig by
contig, one streaming pass per strand) -> save (VCF/TSV rows in input order, atomically)."""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from mamba_dna import log
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import guard_output, os_errors, output_lock, prepare_output
from mamba_dna.genome import Genome
from mamba_dna.io.vcf import (
    ContigResolver,
    VcfReader,
    check_contig_lengths,
    check_info_keys,
    parse_aliases,
)
from mamba_dna.mlm import PLANTCADUCEUS_CONTEXT
from mamba_dna.pipelines.score.config import ScoreConfig, resolve_scores
from mamba_dna.pipelines.score.formats import ScoredWriter
from mamba_dna.pipelines.score.records import ScoreResult, Selection, contig_groups, score_records
from mamba_dna.pipelines.score.scorers import is_masked, load_scorer, trained_length
from mamba_dna.scorer import HiddenTap, device_of
from mamba_dna.tokenizer import A


def run_score(cfg: ScoreConfig, scorer=None, progress: bool = True) -> ScoreResult:
    """Score every ALT of `cfg.vcf`; write `cfg.out`; return the counts (also logged)."""
    t0 = time.time()
    # ---- setup
    guard_output(cfg.out, [cfg.vcf, cfg.fasta, cfg.model, cfg.chrom_alias])
    genome = Genome(cfg.fasta)  # invalid bytes: refused with record and offset, as by tokenize
    resolve = ContigResolver(genome, parse_aliases(cfg.chrom_alias))
    scorer = scorer if scorer is not None else load_scorer(cfg.model, genome, cfg.device)
    masked = is_masked(scorer)
    cfg = resolve_scores(cfg, masked)  # auto -> mlm (masked) or llr,dll (causal)
    if masked:
        _check_masked(cfg, scorer)
    elif "emb" in cfg.scores:
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


def _check_masked(cfg: ScoreConfig, scorer) -> None:
    """Refuse emb without embeddings (kmer2) or with a bad layer now, not mid-run; warn when
    the window is longer than the model was trained on (recurrent: it runs, untested there)."""
    if "emb" in cfg.scores:
        if not hasattr(scorer, "hidden"):
            raise ConfigError(f"--scores emb: scorer {getattr(scorer, 'name', '?')} has no embeddings",
                              hint="emb needs a network model directory; kmer2:K scores mlm and llr only")
        with torch.inference_mode():
            scorer.hidden(torch.full((1, 2), A, dtype=torch.long, device=device_of(scorer)), layer=cfg.emb_layer)
    ctx = cfg.context or PLANTCADUCEUS_CONTEXT
    trained = trained_length(cfg.model) if hasattr(scorer, "hidden") else None
    if trained is not None and ctx > trained:
        log.info(f"warning: --context {ctx:,} is longer than the {trained:,} bp windows {cfg.model} was "
                 "trained on; scoring anyway (a recurrent model runs at any length, but is untested there)")


def _report(cfg: ScoreConfig, result: ScoreResult) -> None:
    log.info(result.line())
    if result.on_n and result.scored == 0:
        log.info(f"warning: nothing was scored: {result.on_n:,} of {result.alts:,} ALT alleles sit on N "
                 f"(unknown) bases of {cfg.fasta} (statuses ref_mismatch / ambiguous_base): "
                 "is the reference hard-masked there?")
        return
    if result.on_n:
        log.info(f"note: {result.on_n:,} of {result.alts:,} ALT alleles sit on N bases of the reference (not scored)")
    mism = result.skipped.get("ref_mismatch", 0)
    if mism and mism >= 0.1 * result.alts:
        log.info(f"warning: {mism:,} of {result.alts:,} REF alleles do not match {cfg.fasta}: "
                 "is it the reference (build) the VCF was called on?")
