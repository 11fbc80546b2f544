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
`block` bases along a dense run: the pass is cut there, one extra call each). Each ALT then
re-runs only `x[snapshot:pos] + ALT + W downstream bases` from its snapshot (prefix < block,
none for a lone variant), batched and ordered by position so a batch pads little. The
re-run's tokens are the floor of an exact method: the ALT side of W bases per strand, against
the naive method's REF and ALT windows of 2W + 1 bases. The naive method (`naive_scores`,
used by the tests and the benchmark) runs whole sequences per variant.

Variants whose context is cut by a contig end (no upstream base on one strand, or fewer than
W bases downstream) are scored with what exists and get status `edge`.

Long contigs with few variants: `--context C` starts each strand's pass C bases (rounded
down to a block) before the first variant of the contig instead of at the contig end; every
variant still has >= C bases of upstream context. (The BRCA1 set: 3,893 SNVs within 79 kb of
a 1.175 Mb contig.)

Sharding: `--shard i/n` takes the i-th of n contiguous blocks of records (input order);
`--region chrom:start-end` (1-based, inclusive) keeps the variants in it. Every shard streams
its contigs from the contig ends, so merged shards equal a single run exactly (with
`--context`, a shard's pass starts before *its* first variant, so a network model's scores
can differ from a single run in the last digits); `merge_outputs` (`mamba-dna score merge`)
joins shard outputs in shard order.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from mamba_dna import __version__, log
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.io.vcf import (
    ContigResolver,
    InfoField,
    TsvWriter,
    VcfReader,
    VcfRecord,
    VcfWriter,
    alt_skip_reason,
    count_records,
    parse_aliases,
    read_tsv,
)
from mamba_dna.model import CPU_TILE_ACTIVATIONS
from mamba_dna.rankshard import parse_shard
from mamba_dna.tokenizer import N, encode, reverse_complement

SCORES = ("llr", "dll", "emb")
DEFAULT_SCORES = ("llr", "dll")
SCORE_COLUMNS = {"llr": ("llr",), "dll": ("dll", "dll_norm"), "emb": ("emb_cos", "emb_l2")}
# columns where a larger value means "more damaging" (distances); the others: negative = damaging
DISTANCE_COLUMNS = ("emb_cos", "emb_l2")
SKIP_REASONS = (
    "symbolic_alt", "star_allele", "missing_alt", "breakend", "invalid_alt", "ref_mismatch",
    "ambiguous_base", "alt_equals_ref", "unknown_contig", "outside_contig",
)


@dataclass
class ScoreConfig:
    """Options of one `score` run (saved in the output's header)."""

    vcf: str
    fasta: str
    model: str  # model directory, "markov:K" or "markov:auto"
    out: str
    scores: tuple[str, ...] = DEFAULT_SCORES
    emb_layer: int | None = None  # EMB layer (MambaLM.hidden's `layer`): None = after the final norm
    window: int = 2000  # DLL window: window // 2 bases downstream on each strand
    strict: bool = False  # REF mismatch / unknown contig = error instead of a flagged skip
    chrom_alias: str | None = None
    region: str | None = None  # chrom:start-end, 1-based inclusive
    shard: str | None = None  # "i/n", 0-based i
    batch_size: int | None = None  # ALT re-runs per model call (None: auto, see call_tokens)
    chunk: int | None = None  # tokens per call in the reference pass (None: auto, see call_tokens)
    block: int = 128  # state snapshot granularity (re-run prefix <= block - 1 bases)
    context: int | None = None  # upstream bases streamed before a contig's first variant (None: all)
    device: str = "auto"
    info_prefix: str = "MDNA_"
    tsv_info: tuple[str, ...] = ()  # INFO keys copied into TSV columns (e.g. labels)

    def __post_init__(self) -> None:
        self.scores = tuple(s.strip().lower() for s in self.scores if s.strip())
        bad = [s for s in self.scores if s not in SCORES]
        if bad or not self.scores:
            raise ConfigError(f"--scores {','.join(self.scores)}: expected a subset of {','.join(SCORES)}")
        if isinstance(self.emb_layer, str):  # from the CLI / a saved config: "final" or an integer
            v = self.emb_layer.strip().lower()
            if v in ("final", "none", ""):
                self.emb_layer = None
            elif re.fullmatch(r"-?\d+", v):
                self.emb_layer = int(v)
            else:
                raise ConfigError(f"--emb-layer {self.emb_layer!r}: expected 'final' or a block index (0 = embeddings, -1 = last block)")
        if self.window < 2:
            raise ConfigError(f"--window {self.window}: expected >= 2 bases")
        if self.context is not None and self.context < 1:
            raise ConfigError(f"--context {self.context}: expected a positive number of bases")
        if (self.batch_size is not None and self.batch_size < 1) or (self.chunk is not None and self.chunk < 1) \
                or self.block < 1:
            raise ConfigError("--batch-size, --chunk and --block must be positive")


# ============================================================================ scorers


def load_scorer(spec: str, genome=None, device: str = "auto"):
    """A scorer (protocol `log_probs(tokens, state)`) from a model directory or markov:K/auto.

    markov:K is fitted on the reference itself (every record, both strands); markov:auto picks
    the order on the last 10% of each record (fitted on the first 90%), then refits on all.
    """
    from mamba_dna.baselines import MarkovModel, best_markov

    if spec.startswith("markov:"):
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
    p = Path(spec)
    if p.is_file() and p.suffix == ".npz":
        return MarkovModel.load(p)
    if not p.is_dir():
        raise InputError(f"--model {spec!r}: not a model directory, a Markov .npz, markov:K or markov:auto")
    from mamba_dna.model import MambaLM

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    model = MambaLM.from_pretrained(p, map_location=dev).eval()
    log.info(f"scorer {model.name}: {p} on {dev}")
    return model


def call_tokens(scorer) -> int:
    """Tokens per model call (batch x length) that keep a call's activations cache-sized.

    A call's large tensors are (batch, d_inner, L): at ~2M elements (8 MB fp32) each, a
    2x128 model runs at ~11 us/token on this project's 2-core CPU, at 8x that (a 65,536-base
    pass chunk or 32 re-runs of 1 kb) at ~16 us/token (bench: min of 4 interleaved rounds).
    The Markov scorer has no such tensors: 65,536. On a GPU, 8x larger calls (16M elements;
    more parallel work per launch; not measured here: tune with --batch-size).
    """
    cfg = getattr(scorer, "config", None)
    d_inner = getattr(cfg, "d_inner", None)
    if not d_inner:
        return 1 << 16
    # CPU: the model's own tile budget (it tiles longer inputs the same way)
    elements = CPU_TILE_ACTIVATIONS if _device_of(scorer).type == "cpu" else (1 << 24)
    return max(1024, elements // int(d_inner))


def _device_of(scorer) -> torch.device:
    d = getattr(scorer, "device", None)
    return d if isinstance(d, torch.device) else torch.device("cpu")


def _init_state(scorer, batch: int):
    return scorer.init_state(batch)


def _clone_state(state):
    if state is None:
        return None
    if hasattr(state, "clone"):
        return state.clone()
    if isinstance(state, np.ndarray):
        return state.copy()
    raise TypeError(f"cannot snapshot a scorer state of type {type(state).__name__}")


def _cat_states(states: list):
    """Stack batch-1 scorer states along the batch dimension."""
    s0 = states[0]
    if isinstance(s0, np.ndarray):
        return np.concatenate(states, axis=0)
    if isinstance(s0, torch.Tensor):
        return torch.cat(states, dim=0)
    if hasattr(s0, "conv") and hasattr(s0, "ssm"):  # MambaState
        return type(s0)(
            [torch.cat([s.conv[i] for s in states]) for i in range(len(s0.conv))],
            [torch.cat([s.ssm[i] for s in states]) for i in range(len(s0.ssm))],
            0,
        )
    raise TypeError(f"cannot batch scorer states of type {type(s0).__name__}")


def _to_tensor(lp) -> torch.Tensor:
    return lp if isinstance(lp, torch.Tensor) else torch.from_numpy(np.asarray(lp))


class HiddenTap:
    """Reads a MambaLM's hidden states at `layer` during `log_probs` calls (a forward hook).

    Same values as `MambaLM.hidden(ids, state, layer)` without a second forward: layer None
    = the final norm's output, k = the residual stream after k blocks (0 = embeddings),
    negative k counts from the end. After each call, `.out` is (batch, L, d_model) fp32.
    """

    def __init__(self, scorer, layer: int | None):
        bb = getattr(scorer, "backbone", None)
        if bb is None or not hasattr(scorer, "hidden"):
            raise ConfigError(f"--scores emb: scorer {getattr(scorer, 'name', '?')} has no embeddings",
                              hint="emb needs a network model directory; markov:K scores llr,dll only")
        n = len(bb.layers)
        if layer is None:
            self.module, self._pick = bb.norm_f, lambda o: o
        else:
            k = layer + n + 1 if layer < 0 else layer
            if not 0 <= k <= n:
                raise ConfigError(f"--emb-layer {layer}: expected an integer in [{-n - 1}, {n}] "
                                  f"(this model has {n} blocks) or 'final'")
            if k == 0:
                self.module, self._pick = bb.embedding, lambda o: o
            else:  # a Block returns (h, conv_state, ssm_state)
                self.module, self._pick = bb.layers[k - 1], lambda o: o[0]
        self.out: torch.Tensor | None = None
        self._handle = None

    def _hook(self, _module, _inputs, output) -> None:
        self.out = self._pick(output).float()  # (batch, L, d_model)

    def __enter__(self) -> HiddenTap:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def take(self) -> torch.Tensor:
        out, self.out = self.out, None
        if out is None:
            raise RuntimeError("HiddenTap: the hooked module did not run")
        return out


# ============================================================================ the fast path


@dataclass
class Job:
    """One REF->ALT change on one strand, in that strand's coordinates."""

    q: int  # 0-based start of REF on this strand
    ref: np.ndarray  # uint8 ids
    alt: np.ndarray  # uint8 ids


@dataclass
class StrandResult:
    llr: np.ndarray  # (n,) float64, NaN where not an SNV or no upstream base
    dll: np.ndarray  # (n,) ALT minus REF total log-lik over allele + downstream
    dll_norm: np.ndarray  # (n,) per-base difference
    edge: np.ndarray  # (n,) bool: context cut by a contig end
    emb_cos: np.ndarray  # (n,) 1 - cos(REF pool, ALT pool) at the EMB layer; NaN without emb
    emb_l2: np.ndarray  # (n,) ||ALT pool - REF pool||_2


class _EmbPools:
    """EMB on one strand: REF pools from the reference pass, ALT pools from the re-runs.

    Variant i's REF pool is mean(h[lo_i:hi_i]) = (H(hi_i) - H(lo_i)) / (hi_i - lo_i) with
    H(t) = sum of the pass's hidden states before t (float64, from the pass origin). H is
    read at each window end as the pass goes by, so memory holds only the open windows,
    not (n, d_model) arrays. A distance is written once both pools of a variant exist.
    """

    SUB = 8192  # rows per float64 prefix-sum block (bounds memory for long chunks)

    def __init__(self, lo: np.ndarray, hi: np.ndarray):
        self.lo, self.hi = lo, hi  # (n,) window [lo, hi) on this strand
        self.by_lo = np.argsort(lo, kind="stable")
        self.by_hi = np.argsort(hi, kind="stable")
        self.p_lo = self.p_hi = 0
        self.running: torch.Tensor | None = None  # (d,) float64: H(s) at the current pass position
        self.open: dict[int, torch.Tensor] = {}  # i -> H(lo_i)
        self.ref: dict[int, torch.Tensor] = {}  # i -> REF pool (d,)
        self.alt: dict[int, torch.Tensor] = {}  # i -> ALT pool (d,)
        self.cos = np.full(lo.size, np.nan)
        self.l2 = np.full(lo.size, np.nan)

    def pass_rows(self, s: int, h: torch.Tensor) -> None:
        """h (T, d) fp32: hidden states of pass positions s .. s+T-1."""
        n = self.lo.size
        if self.running is None:
            self.running = torch.zeros(h.shape[1], dtype=torch.float64, device=h.device)
        for a in range(0, h.shape[0], self.SUB):
            hb = h[a : a + self.SUB].double()  # (t, d)
            s0, s1 = s + a, s + a + hb.shape[0]
            cs = torch.cat([self.running[None], self.running + torch.cumsum(hb, 0)])  # (t + 1, d): H(s0..s1)
            while self.p_lo < n and self.lo[self.by_lo[self.p_lo]] <= s1:
                i = int(self.by_lo[self.p_lo])
                self.open[i] = cs[self.lo[i] - s0].clone()
                self.p_lo += 1
            while self.p_hi < n and self.hi[self.by_hi[self.p_hi]] <= s1:
                i = int(self.by_hi[self.p_hi])
                self.ref[i] = (cs[self.hi[i] - s0] - self.open.pop(i)) / float(self.hi[i] - self.lo[i])
                self.p_hi += 1
                self._finish(i)
            self.running = cs[-1].clone()

    def alt_pool(self, i: int, pool: torch.Tensor) -> None:
        self.alt[i] = pool
        self._finish(i)

    def _finish(self, i: int) -> None:
        if i in self.ref and i in self.alt:
            r, a = self.ref.pop(i), self.alt.pop(i)  # (d,) float64 each
            self.cos[i], self.l2[i] = _distances(r, a)


def _distances(r: torch.Tensor, a: torch.Tensor) -> tuple[float, float]:
    """(1 - cos(r, a), ||a - r||_2) of two pooled vectors, float64."""
    r, a = r.double(), a.double()
    den = float(torch.linalg.vector_norm(r) * torch.linalg.vector_norm(a))
    cos = float(r @ a) / den if den > 0 else math.nan
    return 1.0 - cos, float(torch.linalg.vector_norm(a - r))


@torch.inference_mode()
def strand_scores(scorer, x: np.ndarray, jobs: Sequence[Job], *, want_llr=True, want_dll=True,
                  want_emb=False, emb_layer: int | None = None, down: int = 1000, block: int = 128, chunk: int | None = None,
                  batch_size: int | None = None,
                  context: int | None = None, stats: dict | None = None) -> StrandResult:
    """Scores of `jobs` on one strand `x` (uint8 ids (L,)) with one streaming pass + ALT re-runs.

    context=None streams from the strand's start; context=C starts the pass (from an empty
    state) at the block boundary at or before min(q) - C, so every variant has >= C bases of
    upstream context and the bases before are not read. `stats` (a dict) accumulates
    pass_s / pass_calls / rerun_s / rerun_calls / rerun_tokens. want_emb (network models
    only) adds EMB at `emb_layer` from the same pass and re-runs; it implies the DLL re-runs.
    chunk / batch_size None: sized by `call_tokens` (pass calls of that many tokens; re-run
    batches of about that many tokens in all).
    """
    stats = {} if stats is None else stats
    for k in ("pass_s", "pass_calls", "rerun_s", "rerun_calls", "rerun_tokens"):
        stats.setdefault(k, 0)
    L = int(x.size)
    n = len(jobs)
    dev = _device_of(scorer)
    budget = call_tokens(scorer)
    chunk = chunk or budget
    batch_size = batch_size or max(1, budget // (down + block))  # a re-run is <= prefix + allele + W
    q = np.array([j.q for j in jobs], dtype=np.int64)  # (n,)
    m = np.array([j.ref.size for j in jobs], dtype=np.int64)
    is_snv = np.array([j.ref.size == 1 and j.alt.size == 1 for j in jobs], dtype=bool)
    wd = np.minimum(down, L - q - m) if n else np.zeros(0, np.int64)  # downstream bases available
    llr = np.full(n, np.nan)
    dll = np.full(n, np.nan)
    dll_norm = np.full(n, np.nan)
    tap = HiddenTap(scorer, emb_layer) if want_emb else None
    want_dll = want_dll or want_emb  # EMB's ALT hidden states come from the DLL re-runs
    edge = (q == 0) | ((wd < down) if want_dll else np.zeros(n, bool))
    emb = _EmbPools(q, q + m + wd) if want_emb else None
    if n == 0:
        return StrandResult(llr, dll, dll_norm, edge, np.full(0, np.nan), np.full(0, np.nan))
    if tap is not None:
        tap.__enter__()
    try:
        return _strand_run(scorer, x, jobs, q, m, wd, is_snv, llr, dll, dll_norm, edge, tap, emb,
                           want_llr=want_llr, want_dll=want_dll, block=block, chunk=chunk,
                           batch_size=batch_size, context=context, stats=stats, dev=dev)
    finally:
        if tap is not None:
            tap.__exit__(None, None, None)


def _strand_run(scorer, x, jobs, q, m, wd, is_snv, llr, dll, dll_norm, edge, tap, emb, *, want_llr,
                want_dll, block, chunk, batch_size, context, stats, dev) -> StrandResult:
    """The body of `strand_scores` (the hidden-state tap, if any, is registered around it)."""
    L, n = int(x.size), len(jobs)

    origin = 0 if context is None else max(0, (int(q.min()) - int(context)) // block * block)
    # rows needed from the pass: row q-1 (the distribution at the variant position)
    row_of = np.where(q >= 1, q - 1, -1)
    order_rows = np.argsort(row_of, kind="stable")
    rows4 = np.full((n, 4), np.nan, dtype=np.float64)  # (n, 4) pass rows at q-1
    # prefix sums S(t) = sum_{1<=i<t} log P(x_i | x_<i): REF term = S(q+m+wd) - S(q)
    # a scorer with a finite context (Markov: k bases) re-runs ALT + `ctx` downstream bases
    # only; further downstream its log-probs equal the pass's and are taken from S
    ctx = getattr(scorer, "context_length", None)
    tail = np.minimum(wd, ctx) if ctx is not None else wd  # (n,) downstream bases re-run
    ev = np.unique(np.concatenate([q, q + m + wd, q + m + tail])) if want_dll else np.zeros(0, np.int64)
    ev_val = np.zeros(ev.size, dtype=np.float64)
    # snapshots: the state after x[:b] at each variant cluster's first position b; an ALT
    # re-runs x[b:q] + ALT + downstream from it (prefix < block bases)
    bstart = _snapshot_positions(q, block)  # (n,)
    need_b = np.unique(bstart[bstart > origin]) if want_dll else np.zeros(0, np.int64)
    jobs_at_b: dict[int, list[int]] = {}
    for i in np.lexsort((q, bstart)):  # by snapshot, then position: similar lengths share a batch
        jobs_at_b.setdefault(int(bstart[i]), []).append(int(i))
    pending: list[tuple[int, object]] = []  # (job index, state) ready to re-run

    def flush(final: bool = False) -> None:
        while pending and (final or len(pending) >= batch_size):
            take, rest = pending[:batch_size], pending[batch_size:]
            pending[:] = rest
            t = time.perf_counter()
            stats["rerun_tokens"] += _rerun(scorer, x, jobs, take, bstart, tail, rows4, dll, dll_norm, dev,
                                            tap, emb)
            stats["rerun_s"] += time.perf_counter() - t
            stats["rerun_calls"] += 1

    end = int(min(L, (q + m + wd).max() + 1 if want_dll else q.max() + 1))
    cuts = sorted(set(range(origin + chunk, end, chunk)) | {int(b) for b in need_b if b < end} | {end})
    state, s, running = None, origin, 0.0
    if want_dll and origin in jobs_at_b:  # variants in the first block re-run from an empty state
        pending.extend((i, None) for i in jobs_at_b[origin])
        flush()
    ptr_rows = 0
    for e in cuts:
        if e <= s:
            continue
        t = time.perf_counter()
        seg = torch.from_numpy(x[s:e].astype(np.int64))[None].to(dev)  # (1, e - s)
        lp, state = scorer.log_probs(seg, state)
        lp = _to_tensor(lp)[0].double().cpu().numpy()  # (e - s, 4): row r predicts x[s + r + 1]
        if emb is not None:
            emb.pass_rows(s, tap.take()[0])  # hidden (e - s, d_model) of x[s:e]
        stats["pass_s"] += time.perf_counter() - t
        stats["pass_calls"] += 1
        # rows at q - 1 that fall in this segment
        while ptr_rows < n and row_of[order_rows[ptr_rows]] < e:
            i = order_rows[ptr_rows]
            if row_of[i] >= s:
                rows4[i] = lp[row_of[i] - s]
            ptr_rows += 1
        if want_dll:
            # targets x[s+1 .. min(e, L-1)] of this segment's rows
            nt = min(e, L - 1) - s
            code = x[s + 1 : s + 1 + nt].astype(np.int64) - 4  # (nt,) target base 0..3, 4 = N
            vals = lp[np.arange(nt), np.minimum(code, 3)] if nt > 0 else np.zeros(0)
            vals = np.where(code > 3, 0.0, vals)  # N targets contribute 0, as in the re-runs
            P = running + np.concatenate([[0.0], np.cumsum(vals)])  # S(s+1) .. S(s+1+nt)
            lo, hi = np.searchsorted(ev, [s + 1, s + 1 + nt + 1])
            ev_val[lo:hi] = P[ev[lo:hi] - s - 1]
            running = float(P[-1])
            if e in jobs_at_b and e < L:
                snap = _clone_state(state)
                pending.extend((i, snap) for i in jobs_at_b[e])
                flush()
        s = e
    flush(final=True)
    if want_llr:
        ok = is_snv & (q >= 1)
        ri = np.array([int(jobs[i].ref[0]) - 4 for i in range(n)])
        ai = np.array([int(jobs[i].alt[0]) - 4 for i in range(n)])
        idx = np.nonzero(ok)[0]
        llr[idx] = rows4[idx, ai[idx]] - rows4[idx, ri[idx]]
    if want_dll:
        S = dict(zip(ev.tolist(), ev_val.tolist(), strict=True))
        S[0] = 0.0
        for i in range(n):
            ref_ll = S[int(q[i] + m[i] + wd[i])] - S[int(q[i])]
            n_ref = int(m[i] + wd[i] - (1 if q[i] == 0 else 0))
            alt_ll, n_alt = dll[i], dll_norm[i]  # _rerun stored (alt log-lik, n alt terms) here
            if tail[i] < wd[i]:  # downstream beyond the scorer's context: same as the pass
                alt_ll += S[int(q[i] + m[i] + wd[i])] - S[int(q[i] + m[i] + tail[i])]
                n_alt += int(wd[i] - tail[i])
            dll[i] = alt_ll - ref_ll
            dll_norm[i] = alt_ll / max(n_alt, 1) - ref_ll / max(n_ref, 1)
    if emb is not None:
        return StrandResult(llr, dll, dll_norm, edge, emb.cos, emb.l2)
    return StrandResult(llr, dll, dll_norm, edge, np.full(n, np.nan), np.full(n, np.nan))


def _snapshot_positions(q: np.ndarray, block: int) -> np.ndarray:
    """Per variant, the pass position b <= q whose state its ALT re-run starts from.

    Greedy over the sorted variant positions: a snapshot at the first variant of a cluster,
    the next at the first variant >= `block` bases further on. Every re-run prefix x[b:q] is
    < block bases, a lone variant has none, and a dense run of variants costs one pass cut
    per `block` bases (the cuts are the pass's only extra calls).
    """
    uq = np.unique(q)  # (u,) sorted
    snaps = []
    for p in uq.tolist():
        if not snaps or p - snaps[-1] >= block:
            snaps.append(p)
    sn = np.asarray(snaps, dtype=np.int64)
    return sn[np.searchsorted(sn, q, side="right") - 1] if q.size else np.zeros(0, np.int64)


def _rerun(scorer, x, jobs, take, bstart, wd, rows4, out_ll, out_n, dev, tap=None, emb=None) -> int:
    """Batched ALT re-runs from block snapshots; stores (ALT log-lik, #terms) in out_ll/out_n
    and, with `emb`, each ALT pool (mean hidden state over the ALT allele + downstream).

    Returns the number of tokens run (batch x padded length).
    """
    seqs, starts = [], []
    for i, _ in take:
        j = jobs[i]
        b, qq = int(bstart[i]), j.q
        down = x[qq + j.ref.size : qq + j.ref.size + int(wd[i])]
        seqs.append(np.concatenate([x[b:qq], j.alt, down]).astype(np.int64))
        starts.append(qq - b)
    lmax = max(s.size for s in seqs)
    toks = np.full((len(seqs), lmax), N, dtype=np.int64)  # right padding: never read
    for r, s in enumerate(seqs):
        toks[r, : s.size] = s
    states = [st if st is not None else _init_state(scorer, 1) for _, st in take]
    states = [torch.from_numpy(st) if isinstance(st, np.ndarray) else st for st in states]
    state = _cat_states(states)
    lp, _ = scorer.log_probs(torch.from_numpy(toks).to(dev), state)
    lp = _to_tensor(lp).double().cpu().numpy()  # (batch, lmax, 4): row r predicts toks[r + 1]
    if emb is not None:
        hid = tap.take()  # (batch, lmax, d_model): h_t has read toks[t]
        for r, (i, _) in enumerate(take):
            k, a = starts[r], jobs[i].alt.size
            emb.alt_pool(i, hid[r, k : k + a + int(wd[i])].double().mean(0))  # ALT allele + downstream
    for r, (i, _) in enumerate(take):
        s, seq, k = seqs[r], seqs[r], starts[r]
        tgt = np.arange(max(k, 1), s.size)  # ALT allele + downstream positions in seq
        code = seq[tgt] - 4
        good = code < 4  # N targets contribute 0 (same on the REF side)
        ll = float(lp[r, tgt[good] - 1, code[good]].sum())
        nterm = int(tgt.size)
        q = jobs[i].q
        if k == 0 and q >= 1:  # the first ALT base is predicted by the pass row q - 1
            ll += float(rows4[i, int(jobs[i].alt[0]) - 4])
            nterm += 1
        out_ll[i], out_n[i] = ll, nterm
    return int(toks.size)


def score_contig(scorer, x: np.ndarray, starts: Sequence[int], refs: Sequence[np.ndarray],
                 alts: Sequence[np.ndarray], *, want_llr=True, want_dll=True, want_emb=False,
                 emb_layer: int | None = None, window=2000, block=128, chunk: int | None = None,
                 batch_size: int | None = None,
                 context: int | None = None, stats: dict | None = None) -> dict[str, np.ndarray]:
    """Both strands of one contig: {'llr','dll','dll_norm','emb_cos','emb_l2','edge'} per
    variant (input order); a score not asked for (or not defined, e.g. LLR of an indel) is NaN."""
    L = int(x.size)
    down = window // 2
    fw = [Job(int(p), r, a) for p, r, a in zip(starts, refs, alts, strict=True)]
    rv = [Job(L - int(p) - r.size, reverse_complement(r), reverse_complement(a))
          for p, r, a in zip(starts, refs, alts, strict=True)]
    kw = dict(want_llr=want_llr, want_dll=want_dll, want_emb=want_emb, emb_layer=emb_layer, down=down,
              block=block, chunk=chunk, batch_size=batch_size, context=context, stats=stats)
    f = strand_scores(scorer, x, fw, **kw)
    r = strand_scores(scorer, reverse_complement(x), rv, **kw)
    with warnings.catch_warnings():  # both strands NaN (e.g. LLR of an indel) -> NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {k: np.nanmean(np.stack([getattr(f, k), getattr(r, k)]), axis=0)
               for k in ("llr", "dll", "dll_norm", "emb_cos", "emb_l2")}
    out["edge"] = f.edge | r.edge
    return out


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
    dev = _device_of(scorer)

    def lp_of(seq):
        t = torch.from_numpy(seq.astype(np.int64))[None].to(dev)
        return _to_tensor(scorer.log_probs(t, None)[0])[0].double().cpu().numpy()  # (len, 4)

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
            c, d = _distances(pr, pa)
            coss.append(c)
            l2s.append(d)
    res["llr"] = float(np.mean(llrs)) if llrs else math.nan
    res["emb_cos"] = float(np.mean(coss)) if coss else math.nan
    res["emb_l2"] = float(np.mean(l2s)) if l2s else math.nan
    res["dll"] = float(np.mean(dlls))
    res["dll_norm"] = float(np.mean(norms))
    return res


# ============================================================================ the pipeline


@dataclass
class Summary:
    records: int = 0
    alts: int = 0
    scored: int = 0
    edge: int = 0
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def line(self) -> str:
        sk = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"scored {self.scored:,} of {self.alts:,} ALT alleles in {self.records:,} records "
                f"({self.edge:,} near a contig end, status 'edge'); skipped: {sk}; {self.seconds:.1f}s")


def parse_region(spec: str | None) -> tuple[str, int, int] | None:
    """'chrom:start-end' (1-based inclusive) or 'chrom' -> (chrom, start0, end0 half-open)."""
    if not spec:
        return None
    m = re.fullmatch(r"(.+?)(?::([\d,]+)-([\d,]+))?", spec.strip())
    if not m:
        raise ConfigError(f"--region {spec!r}: expected chrom:start-end (1-based, inclusive)")
    chrom = m.group(1)
    if m.group(2) is None:
        return chrom, 0, 1 << 62
    a, b = int(m.group(2).replace(",", "")), int(m.group(3).replace(",", ""))
    if a < 1 or b < a:
        raise ConfigError(f"--region {spec!r}: expected 1 <= start <= end")
    return chrom, a - 1, b


def _out_kind(out: str) -> str:
    if out == "-" or out.endswith((".tsv", ".tsv.gz", ".txt")):
        return "tsv"
    if out.endswith((".vcf", ".vcf.gz", ".vcf.bgz")):
        return "vcf"
    raise ConfigError(f"--out {out!r}: expected a .vcf, .vcf.gz, .tsv or .tsv.gz path, or '-' (TSV on stdout)")


def run(cfg: ScoreConfig, scorer=None) -> Summary:
    """Score every ALT of `cfg.vcf`; write `cfg.out`; return the summary (also logged)."""
    from mamba_dna.genome import Genome

    t0 = time.time()
    # ---- setup
    kind = _out_kind(cfg.out)
    shard_i, shard_n = parse_shard(cfg.shard)
    region = parse_region(cfg.region)
    genome = Genome(cfg.fasta, invalid="N")
    resolve = ContigResolver(genome, parse_aliases(cfg.chrom_alias))
    if scorer is None:
        scorer = load_scorer(cfg.model, genome, cfg.device)
    if "emb" in cfg.scores:
        HiddenTap(scorer, cfg.emb_layer)  # a clear error now (Markov scorer, bad layer), not mid-run
    reader = VcfReader(cfg.vcf)
    lo_rec, hi_rec = 0, None
    if shard_n > 1:
        total = count_records(cfg.vcf)
        lo_rec, hi_rec = total * shard_i // shard_n, total * (shard_i + 1) // shard_n
        log.info(f"shard {shard_i}/{shard_n}: records {lo_rec:,}..{hi_rec:,} of {total:,}")
    if region is not None:
        rname = resolve(region[0])
        if rname is None:
            raise InputError(resolve.missing_message(region[0], f"--region {cfg.region}"))
        region = (rname, region[1], region[2])

    p = cfg.info_prefix
    cols = [c for sc in SCORES if sc in cfg.scores for c in SCORE_COLUMNS[sc]]
    layer = "final norm" if cfg.emb_layer is None else f"layer {cfg.emb_layer}"
    pool = f"allele + {cfg.window // 2} bases downstream"
    infos = {
        "llr": InfoField(p + "LLR", "A", "Float", "mamba-dna: log P(ALT) - log P(REF) at the SNV given its context, mean of both strands (negative = ALT less likely)"),
        "dll": InfoField(p + "DLL", "A", "Float", f"mamba-dna: ALT minus REF log-likelihood of allele + {cfg.window // 2} bases downstream, mean of both strands"),
        "dll_norm": InfoField(p + "DLL_NORM", "A", "Float", "mamba-dna: ALT minus REF mean log-likelihood per scored base (allele-length normalised DLL)"),
        "emb_cos": InfoField(p + "EMB_COS", "A", "Float", f"mamba-dna: 1 - cosine similarity of the REF and ALT hidden states at the {layer}, each mean-pooled over the {pool}, mean of both strands (larger = more different)"),
        "emb_l2": InfoField(p + "EMB_L2", "A", "Float", f"mamba-dna: L2 distance between the REF and ALT hidden states at the {layer}, each mean-pooled over the {pool}, mean of both strands (larger = more different)"),
    }
    status_info = InfoField(p + "STATUS", "A", "String", "mamba-dna: ok, edge (context cut by a contig end) or why the ALT was not scored")
    prov = (f"mamba-dna {__version__} score model={cfg.model} scorer={getattr(scorer, 'name', '?')} "
            f"window={cfg.window} shard={shard_i}/{shard_n} region={cfg.region or 'all'}"
            + (f" emb_layer={'final' if cfg.emb_layer is None else cfg.emb_layer}" if "emb" in cfg.scores else ""))
    if kind == "vcf":
        writer = VcfWriter(cfg.out, reader.meta, reader.columns, [infos[c] for c in cols] + [status_info],
                           extra_meta=[f"##mamba-dna_score={prov}"])
    else:
        writer = TsvWriter(cfg.out, [*cols, "status", *[k.lower() for k in cfg.tsv_info]], comment=prov)

    summary = Summary()
    seen_contigs: set[str] = set()
    unknown: set[str] = set()

    # ---- run: consecutive records of a contig form a group, scored in one pass per strand
    def emit(group: list[VcfRecord], fasta_name: str | None) -> None:
        results = _score_group(cfg, scorer, genome, group, fasta_name, summary)
        for rec, per_alt in zip(group, results, strict=True):
            if kind == "vcf":
                vals = {infos[c].id: [r[c] for r in per_alt] for c in cols}
                vals[status_info.id] = [r["status"] for r in per_alt]
                writer.write(rec, vals)
            else:
                inf = rec.info if cfg.tsv_info else {}
                for alt, r in zip(rec.alts, per_alt, strict=True):
                    extra = [inf.get(k, ".") if inf.get(k) is not True else "1" for k in cfg.tsv_info]
                    writer.write_row(rec, alt, [*(r[c] for c in cols), r["status"], *extra])

    with writer, log.progress("scoring", unit="records") as prog:
        group: list[VcfRecord] = []
        cur: str | None = None
        cur_fasta: str | None = None
        for rec in reader:
            if rec.index < lo_rec:
                continue
            if hi_rec is not None and rec.index >= hi_rec:
                break
            fasta_name = resolve(rec.chrom)
            if fasta_name is None:
                if cfg.strict:
                    raise InputError(resolve.missing_message(rec.chrom, f"{cfg.vcf}:{rec.line}"))
                if rec.chrom not in unknown:
                    unknown.add(rec.chrom)
                    log.info("warning: " + resolve.missing_message(rec.chrom, f"{cfg.vcf}:{rec.line}")
                             + "; its records are written unscored (status unknown_contig)")
            if region is not None and (fasta_name != region[0] or not region[1] <= rec.start < region[2]):
                continue
            if rec.chrom != cur and group:
                emit(group, cur_fasta)
                prog.advance(len(group), note=cur or "")
                group = []
            if rec.chrom != cur:
                if rec.chrom in seen_contigs:
                    log.info(f"{cfg.vcf}:{rec.line}: contig {rec.chrom} appears again (unsorted VCF); "
                             "it is streamed again, results stay correct")
                seen_contigs.add(rec.chrom)
                cur, cur_fasta = rec.chrom, fasta_name
            group.append(rec)
        if group:
            emit(group, cur_fasta)
            prog.advance(len(group), note=cur or "")
        if summary.alts and summary.skipped.get("unknown_contig", 0) == summary.alts:
            # nothing matched: almost surely a naming mismatch; no output is written
            raise InputError(resolve.missing_message(sorted(unknown)[0], cfg.vcf))
    summary.seconds = time.time() - t0
    log.info(summary.line())
    mism = summary.skipped.get("ref_mismatch", 0)
    if mism and mism >= 0.1 * summary.alts:
        log.info(f"warning: {mism:,} of {summary.alts:,} REF alleles do not match {cfg.fasta}: "
                 "is it the reference (build) the VCF was called on?")
    return summary


def _score_group(cfg: ScoreConfig, scorer, genome, group: list[VcfRecord], fasta_name: str | None,
                 summary: Summary) -> list[list[dict]]:
    """Per record, per ALT: {'llr','dll','dll_norm','emb_cos','emb_l2','status'} for one contig's records."""
    blank = dict.fromkeys(c for cs in SCORE_COLUMNS.values() for c in cs)
    results = [[{**blank, "status": "ok"} for _ in rec.alts] for rec in group]
    summary.records += len(group)
    summary.alts += sum(len(r.alts) for r in group)
    if fasta_name is None:
        for res in results:
            for r in res:
                r["status"] = "unknown_contig"
        summary.skipped["unknown_contig"] += sum(len(r) for r in results)
        return results
    x, _ = genome.tokens(fasta_name)  # (L,) uint8: the whole contig
    L = int(x.size)
    starts, refs, alts, where = [], [], [], []
    for gi, rec in enumerate(group):
        ref_ids = encode(rec.ref)
        reason = None
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
                summary.skipped[why] += 1
                continue
            starts.append(rec.start)
            refs.append(ref_ids)
            alts.append(alt_ids)
            where.append((gi, ai))
    if not where:
        return results
    sc = score_contig(scorer, x, starts, refs, alts, want_llr="llr" in cfg.scores,
                      want_dll="dll" in cfg.scores, want_emb="emb" in cfg.scores,
                      emb_layer=cfg.emb_layer, window=cfg.window, block=cfg.block,
                      chunk=cfg.chunk, batch_size=cfg.batch_size, context=cfg.context)
    for k, (gi, ai) in enumerate(where):
        r = results[gi][ai]
        for c in blank:
            v = float(sc[c][k])
            r[c] = None if math.isnan(v) else v
        if sc["edge"][k]:
            r["status"] = "edge"
            summary.edge += 1
        summary.scored += 1
    return results


# ============================================================================ merge / evaluate


def merge_outputs(parts: Sequence[str], out: str) -> int:
    """Join shard outputs (all TSV or all VCF) in shard order into `out`; returns rows written."""
    if not parts:
        raise ConfigError("score merge: no shard files given")
    kind = _out_kind(parts[0])
    if any(_out_kind(p) != kind for p in parts) or _out_kind(out) != kind:
        raise ConfigError("score merge: shards and output must all be TSV or all VCF")
    shard_re = re.compile(r"shard=(\d+)/(\d+)")
    infos = []
    for pth in parts:
        if kind == "tsv":
            comment, header, rows = read_tsv(pth)
            infos.append((comment, header, rows, None, None))
        else:
            rd = VcfReader(pth)
            prov = next((m for m in rd.meta if m.startswith("##mamba-dna_score=")), "")
            infos.append((prov, None, list(rd), rd.meta, rd.columns))
    keyed = []
    for pth, inf in zip(parts, infos, strict=True):
        mm = shard_re.search(inf[0])
        if not mm:
            raise InputError(f"{pth}: not a mamba-dna score output (no shard=i/n provenance line)")
        keyed.append((int(mm.group(1)), int(mm.group(2)), pth, inf))
    ns = {k[1] for k in keyed}
    got = sorted(k[0] for k in keyed)
    if len(ns) != 1 or got != list(range(next(iter(ns)))):
        raise InputError(f"score merge: expected shards 0..n-1 of one run, got {got} of n={sorted(ns)}")
    keyed.sort(key=lambda k: k[0])
    n_total = next(iter(ns))
    first = keyed[0][3]
    merged_prov = shard_re.sub(f"shard=0/1 merged_from={n_total}", first[0])
    written = 0
    if kind == "tsv":
        header = first[1]
        for _, _, pth, inf in keyed:
            if inf[1] != header:
                raise InputError(f"{pth}: columns {inf[1]} differ from the first shard's {header}")
        from mamba_dna.fsutil import atomic_path

        with atomic_path(out) as tmp:
            import gzip

            opener = gzip.open if out.endswith(".gz") else open
            with opener(tmp, "wt", encoding="utf-8") as fh:
                fh.write(f"#{merged_prov}\n" + "\t".join(header) + "\n")
                for _, _, _, inf in keyed:
                    for row in inf[2]:
                        fh.write("\t".join(row) + "\n")
                        written += 1
        return written
    meta = [m for m in first[3] if not m.startswith("##mamba-dna_score=")]
    with VcfWriter(out, meta, first[4], [], extra_meta=[merged_prov]) as w:
        for _, _, _, inf in keyed:
            for rec in inf[2]:
                w.write(rec, {})
                written += 1
    return written


def read_scored(path: str) -> list[dict]:
    """Rows (one per ALT) of a score output, TSV or VCF: chrom, pos, ref, alt, llr, dll, ..."""
    kind = _out_kind(path)
    out = []
    if kind == "tsv":
        _, header, rows = read_tsv(path)
        for row in rows:
            out.append(dict(zip(header, row, strict=True)))
        return out
    rd = VcfReader(path)
    keys = [m.split("ID=", 1)[1].split(",", 1)[0] for m in rd.meta if m.startswith("##INFO=<ID=MDNA_")]
    for rec in rd:
        info = rec.info
        per = {k[5:].lower(): [] for k in keys}  # fields absent from a record: missing (".")
        for key, v in info.items():
            if key.startswith("MDNA_") and isinstance(v, str):
                per[key[5:].lower()] = v.split(",")
        for ai, alt in enumerate(rec.alts):
            row = {"chrom": rec.chrom, "pos": str(rec.pos), "ref": rec.ref, "alt": alt}
            for k, vals in per.items():
                row[k] = vals[ai] if ai < len(vals) else "."
            out.append(row)
    return out


def evaluate_labelled(scored: str, truth_vcf: str, label: str, metric: str = "auroc",
                      score: str = "llr", positive: str = "1", threshold: float | None = None) -> dict:
    """Metric of a score column against a label INFO field of the truth VCF.

    metric "auroc": label == `positive` (e.g. Y=1: LOF / pathogenic) is the positive class
    and the predictor is -score (negative score = damaging), or +score for the distances
    (emb_cos, emb_l2: larger = more damaging); `res["predictor"]` says which. metric "spearman": rank
    correlation of the score with a continuous label (e.g. FITNESS); with `threshold`, also
    the AUROC of label < threshold. Variants join on (chrom, pos, ref, alt); missing scores
    are left out and counted.
    """
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    truth = {}
    for rec in VcfReader(truth_vcf):
        v = rec.info.get(label)
        if v is None or v is True:
            continue
        for alt in rec.alts:
            truth[(rec.chrom, rec.pos, rec.ref, alt)] = v
    ys, ss = [], []
    missing = 0
    for row in read_scored(scored):
        key = (row["chrom"], int(row["pos"]), row["ref"], row["alt"])
        if key not in truth:
            continue
        v = row.get(score, ".")
        if v in (".", "", None):
            missing += 1
            continue
        ys.append(truth[key])
        ss.append(float(v))
    s = np.array(ss)
    sign = 1.0 if score in DISTANCE_COLUMNS else -1.0  # predictor of "damaging"
    res = {"n": len(ss), "missing_score": missing, "score": score, "label": label, "metric": metric,
           "predictor": f"{'+' if sign > 0 else '-'}{score}"}
    if not ss:
        raise InputError(f"{scored}: no {score!r} values for the variants of {truth_vcf}",
                         hint="was it scored with that score (--scores)?")
    if metric == "auroc":
        y = np.array([str(v) == positive for v in ys])
        if y.all() or not y.any():
            raise InputError(f"{truth_vcf}: label {label} has one class among the scored variants")
        res["value"] = float(roc_auc_score(y, sign * s))
        res["n_pos"] = int(y.sum())
    elif metric == "spearman":
        y = np.array([float(v) for v in ys])
        res["value"] = float(spearmanr(s, y).statistic)
        if threshold is not None:
            yb = y < threshold
            res["auroc_below_threshold"] = float(roc_auc_score(yb, sign * s))
    else:
        raise ConfigError(f"metric {metric!r}: expected auroc or spearman")
    return res


def config_json(cfg: ScoreConfig) -> dict:
    d = asdict(cfg)
    d["mamba_dna_version"] = __version__
    return d


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1))
