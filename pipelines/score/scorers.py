"""`--model`: a model directory, a saved Markov .npz, or a Markov model fitted on the reference."""

from __future__ import annotations

import math
from pathlib import Path

from mamba_dna import log
from mamba_dna.baselines import MarkovModel, best_markov
from mamba_dna.device import resolve_device
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.load import load_model


def load_scorer(spec: str, genome=None, device: str = "auto"):
    """A scorer (protocol: `mamba_dna.scorer`) from a model directory or markov:K/auto.

    markov:K is fitted on the reference itself (every record, both strands); markov:auto picks
    the order on the last 10% of each record (fitted on the first 90%), then refits on all.
    """
    if spec.startswith("markov:"):
        return fit_markov(spec, genome)
    p = Path(spec)
    if p.is_file() and p.suffix == ".npz":
        return MarkovModel.load(p)
    if not p.is_dir():
        raise InputError(f"--model {spec!r}: not a model directory, a Markov .npz, markov:K or markov:auto")
    dev = resolve_device(device)
    model = load_model(p, map_location=dev)
    log.info(f"scorer {model.name}: {p} on {dev}")
    return model


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
