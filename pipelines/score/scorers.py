"""`--model`: a model directory (or hf:ORG/NAME), a saved baseline .npz (Markov or two-sided
k-mer), or a baseline fitted on the reference (markov:K|auto, kmer2:K|auto)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from mamba_dna import log
from mamba_dna.baselines import (
    MarkovModel,
    TwoSidedKmer,
    best_markov,
    kmer2_from_spec,
    load_baseline,
)
from mamba_dna.device import resolve_device
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.load import load_model


def load_scorer(spec: str, genome=None, device: str = "auto"):
    """A scorer from a model directory, hf:ID, a baseline .npz, markov:K|auto or kmer2:K|auto.

    Causal scorers (MambaLM, MarkovModel) follow `mamba_dna.scorer`'s protocol; masked ones
    (`is_causal = False`: CaduceusLM, TwoSidedKmer) offer `masked_log_probs(ids)`.
    markov:K / kmer2:K are fitted on the reference itself (every record, both strands);
    markov:auto / kmer2:auto choose the order on the last 10% of each record (fitted on the
    first 90%), then refit on all.
    """
    if spec.startswith("markov:"):
        return fit_markov(spec, genome)
    if spec.startswith("kmer2:"):
        return fit_kmer2(spec, genome)
    p = Path(spec)
    if p.is_file() and p.suffix == ".npz":
        return load_baseline(p)
    if not (p.is_dir() or spec.startswith("hf:")):
        raise InputError(f"--model {spec!r}: not a model directory, hf:ORG/NAME, a baseline .npz, "
                         "markov:K|auto or kmer2:K|auto")
    dev = resolve_device(device)
    model = load_model(spec, map_location=dev)
    log.info(f"scorer {model.name}: {spec} on {dev}")
    return model


def is_masked(scorer) -> bool:
    """A masked (bidirectional) scorer: scored by masking the variant, not left to right."""
    return getattr(scorer, "is_causal", True) is False


def masked_strands(scorer) -> str:
    """"forward" for strand-equivariant masked scorers (Caduceus-PS; the two-sided k-mer,
    counted on both strands), "both" for the others (Caduceus-Ph: the mean of the strands)."""
    if isinstance(scorer, TwoSidedKmer) or getattr(getattr(scorer, "config", None), "rcps", False):
        return "forward"
    return "both"


def trained_length(spec: str) -> int | None:
    """Window length a model directory was trained on, when it says so (else None).

    A mamba-dna pretrain run (RUN/model beside RUN/config.json with `seq_len`), a config key
    (`seq_len`, `max_seq_len`, `max_position_embeddings`), or a hub name with `seqlen-131k`
    or PlantCaduceus (512 bp windows).
    """
    p = Path(spec)
    for cfg in (p / "config.json", p.parent / "config.json"):
        try:
            d = json.loads(cfg.read_text())
        except (OSError, ValueError):
            continue
        for key in ("seq_len", "max_seq_len", "max_position_embeddings"):
            if isinstance(d.get(key), int) and d[key] > 0:
                return int(d[key])
    m = re.search(r"seqlen-(\d+)(k?)", spec, re.IGNORECASE)
    if m:
        n = int(m.group(1)) * (1000 if m.group(2) else 1)
        p2 = 1 << round(math.log2(n))  # "131k" is 131,072 = 2**17
        return p2 if m.group(2) and abs(p2 - n) <= 0.05 * n else n
    if "plantcaduceus" in spec.lower():
        return 512
    return None


def fit_markov(spec: str, genome) -> MarkovModel:
    """markov:K or markov:auto fitted on every record of `genome` (both strands)."""
    if genome is None:
        raise ConfigError("a markov:K scorer needs the reference FASTA to fit on")
    arg = spec.split(":", 1)[1]
    seqs = [genome.tokens(n)[0] for n in genome.names]
    if arg == "auto":
        train = [s[: int(s.size * 0.9)] for s in seqs]
        val = [s[int(s.size * 0.9) :] for s in seqs]
        # orders past log4(bases) + 1 cannot be estimated (and cost 4**k memory)
        total = max(sum(s.size for s in seqs), 4)
        top = int(min(12, max(1, math.log(total, 4) + 1)))
        best, table = best_markov(train, val, orders=range(0, top + 1))
        log.info("markov:auto validation bits/base: " + ", ".join(f"{k}:{v:.4f}" for k, v in table.items()))
        order = best.order
    elif arg.isdigit():
        order = int(arg)
    else:
        raise ConfigError(f"--model {spec!r}: expected markov:K (K an integer) or markov:auto")
    m = MarkovModel(order).fit(seqs)
    log.info(f"scorer {m.name}: fitted on {genome.path.name} ({sum(s.size for s in seqs):,} bases, both strands)")
    return m


def fit_kmer2(spec: str, genome) -> TwoSidedKmer:
    """kmer2:K or kmer2:auto (P(base | K bases each side)) fitted on every record of `genome`."""
    if genome is None:
        raise ConfigError("a kmer2:K scorer needs the reference FASTA to fit on")
    seqs = [genome.tokens(n)[0] for n in genome.names]
    m, table = kmer2_from_spec(spec, seqs)
    if table is not None:
        log.info("kmer2:auto validation bits/base: " + ", ".join(f"{k}:{v:.4f}" for k, v in table.items()))
    log.info(f"scorer {m.name} (alpha {m.alpha:g}): fitted on {genome.path.name} "
             f"({sum(s.size for s in seqs):,} bases, both strands)")
    return m
