"""The fast path: every variant of a contig from one streaming pass per strand plus short ALT
re-runs from state snapshots (how and why: the package docstring). `naive.py` is its reference."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from mamba_dna.pipelines.score.emb import EmbPools
from mamba_dna.scorer import HiddenTap, as_tensor, call_tokens, clone_state, device_of, stack_states
from mamba_dna.tokenizer import N, reverse_complement


@dataclass
class AlleleChange:
    """One REF->ALT change on one strand, in that strand's coordinates."""

    q: int  # 0-based start of REF on this strand
    ref: np.ndarray  # (m,) uint8 ids
    alt: np.ndarray  # (a,) uint8 ids


@dataclass
class StrandResult:
    llr: np.ndarray  # (n,) float64, NaN where not an SNV or no upstream base
    dll: np.ndarray  # (n,) ALT minus REF total log-lik over allele + downstream
    dll_norm: np.ndarray  # (n,) per-base difference
    edge: np.ndarray  # (n,) bool: context cut by a contig end
    emb_cos: np.ndarray  # (n,) 1 - cos(REF pool, ALT pool) at the EMB layer; NaN without emb
    emb_l2: np.ndarray  # (n,) ||ALT pool - REF pool||_2


STAT_KEYS = ("pass_s", "pass_calls", "rerun_s", "rerun_calls", "rerun_tokens")


def score_contig(scorer, x: np.ndarray, starts: Sequence[int], refs: Sequence[np.ndarray],
                 alts: Sequence[np.ndarray], *, want_llr=True, want_dll=True, want_emb=False,
                 emb_layer: int | None = None, window=2000, snapshot_every=128, chunk: int | None = None,
                 batch_size: int | None = None,
                 context: int | None = None, stats: dict | None = None) -> dict[str, np.ndarray]:
    """Both strands of one contig: {'llr','dll','dll_norm','emb_cos','emb_l2','edge'} per
    variant (input order); a score not asked for (or not defined, e.g. LLR of an indel) is NaN."""
    L = int(x.size)
    fw = [AlleleChange(int(p), r, a) for p, r, a in zip(starts, refs, alts, strict=True)]
    rv = [AlleleChange(L - int(p) - r.size, reverse_complement(r), reverse_complement(a))
          for p, r, a in zip(starts, refs, alts, strict=True)]
    kw = dict(want_llr=want_llr, want_dll=want_dll, want_emb=want_emb, emb_layer=emb_layer,
              down=window // 2, snapshot_every=snapshot_every, chunk=chunk, batch_size=batch_size,
              context=context, stats=stats)
    f = strand_scores(scorer, x, fw, **kw)
    r = strand_scores(scorer, reverse_complement(x), rv, **kw)
    with warnings.catch_warnings():  # both strands NaN (e.g. LLR of an indel) -> NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {k: np.nanmean(np.stack([getattr(f, k), getattr(r, k)]), axis=0)
               for k in ("llr", "dll", "dll_norm", "emb_cos", "emb_l2")}
    out["edge"] = f.edge | r.edge
    return out


@torch.inference_mode()
def strand_scores(scorer, x: np.ndarray, changes: Sequence[AlleleChange], *, want_llr=True,
                  want_dll=True, want_emb=False, emb_layer: int | None = None, down: int = 1000,
                  snapshot_every: int = 128, chunk: int | None = None, batch_size: int | None = None,
                  context: int | None = None, stats: dict | None = None) -> StrandResult:
    """Scores of `changes` on one strand `x` (uint8 ids (L,)) with one streaming pass + ALT re-runs.

    context=None streams from the strand's start; context=C starts the pass (from an empty
    state) at the snapshot boundary at or before min(q) - C, so every variant has >= C bases
    of upstream context and the bases before are not read. `stats` (a dict) accumulates
    STAT_KEYS. want_emb (network models only) adds EMB at `emb_layer` from the same pass and
    re-runs; it implies the DLL re-runs. chunk / batch_size None: sized by `call_tokens`
    (pass calls of that many tokens; re-run batches of about that many tokens in all).
    """
    stats = {} if stats is None else stats
    for k in STAT_KEYS:
        stats.setdefault(k, 0)
    budget = call_tokens(scorer)
    run = _StrandRun(scorer, x, changes, want_llr=want_llr, want_dll=want_dll or want_emb,
                     down=down, snapshot_every=snapshot_every, chunk=chunk or budget,
                     batch_size=batch_size or max(1, budget // (down + snapshot_every)),
                     context=context, stats=stats)
    tap = HiddenTap(scorer, emb_layer) if want_emb else None  # a clear error first (Markov, layer)
    if not changes:
        return run.result()
    if tap is not None:  # EMB's ALT hidden states come from the DLL re-runs (want_dll above)
        run.emb = EmbPools(run.q, run.q + run.m + run.wd)
        run.tap = tap
    with tap if tap is not None else nullcontext():
        run.stream()
    return run.result()


class _StrandRun:
    """One strand's pass and re-runs. Per variant i: q (REF start), m (REF length), wd
    (downstream bases that exist, <= down), tail (downstream bases re-run: wd, or the scorer's
    finite context), bstart (the snapshot its re-run starts from)."""

    def __init__(self, scorer, x, changes, *, want_llr, want_dll, down, snapshot_every, chunk,
                 batch_size, context, stats):
        self.scorer, self.x, self.changes = scorer, x, changes
        self.want_llr, self.want_dll, self.stats = want_llr, want_dll, stats
        self.chunk, self.batch_size, self.dev = chunk, batch_size, device_of(scorer)
        self.tap: HiddenTap | None = None
        self.emb: EmbPools | None = None
        L, n = int(x.size), len(changes)
        q = self.q = np.array([c.q for c in changes], dtype=np.int64)  # (n,)
        m = self.m = np.array([c.ref.size for c in changes], dtype=np.int64)  # (n,)
        self.is_snv = np.array([c.ref.size == 1 and c.alt.size == 1 for c in changes], dtype=bool)
        self.wd = np.minimum(down, L - q - m) if n else np.zeros(0, np.int64)  # (n,)
        self.edge = (q == 0) | ((self.wd < down) if want_dll else np.zeros(n, bool))
        # a scorer with a finite context (Markov: k bases) re-runs ALT + `ctx` downstream bases
        # only; further downstream its log-probs equal the pass's and are taken from S
        ctx = getattr(scorer, "context_length", None)
        self.tail = np.minimum(self.wd, ctx) if ctx is not None else self.wd  # (n,)
        self.rows4 = np.full((n, 4), np.nan, dtype=np.float64)  # (n, 4) pass rows at q - 1
        self.alt_ll = np.full(n, np.nan)  # (n,) ALT log-lik over the re-run part
        self.alt_terms = np.zeros(n, np.int64)  # (n,) number of terms in alt_ll
        self.origin = 0 if context is None or not n else \
            max(0, (int(q.min()) - int(context)) // snapshot_every * snapshot_every)
        # snapshots: the state after x[:b] at each variant cluster's first position b; an ALT
        # re-runs x[b:q] + ALT + downstream from it (prefix < snapshot_every bases)
        self.bstart = snapshot_positions(q, snapshot_every)  # (n,)
        self.at_snapshot: dict[int, list[int]] = {}
        for i in np.lexsort((q, self.bstart)):  # by snapshot, then position: similar lengths share a batch
            self.at_snapshot.setdefault(int(self.bstart[i]), []).append(int(i))
        self.pending: list[tuple[int, object]] = []  # (variant, state) ready to re-run

    # ---- the pass

    def stream(self) -> None:
        """The reference pass from `origin`, cut at chunk ends and at snapshot positions."""
        x, L, q, n = self.x, int(self.x.size), self.q, len(self.changes)
        want_dll = self.want_dll
        # rows needed from the pass: row q-1 (the distribution at the variant position)
        row_of = np.where(q >= 1, q - 1, -1)
        order_rows = np.argsort(row_of, kind="stable")
        # prefix sums S(t) = sum_{1<=i<t} log P(x_i | x_<i): REF term = S(q+m+wd) - S(q)
        ev = np.unique(np.concatenate([q, q + self.m + self.wd, q + self.m + self.tail])) \
            if want_dll else np.zeros(0, np.int64)
        ev_val = np.zeros(ev.size, dtype=np.float64)
        snaps = np.unique(self.bstart[self.bstart > self.origin]) if want_dll else np.zeros(0, np.int64)
        end = int(min(L, (q + self.m + self.wd).max() + 1 if want_dll else q.max() + 1))
        cuts = sorted(set(range(self.origin + self.chunk, end, self.chunk))
                      | {int(b) for b in snaps if b < end} | {end})
        state, s, running, ptr = None, self.origin, 0.0, 0
        if want_dll and self.origin in self.at_snapshot:  # the first cluster re-runs from empty
            self._queue(self.origin, None)
        for e in cuts:
            if e <= s:
                continue
            lp, state = self._pass_call(s, e, state)  # lp (e - s, 4): row r predicts x[s + r + 1]
            while ptr < n and row_of[order_rows[ptr]] < e:  # rows at q - 1 in this segment
                i = order_rows[ptr]
                if row_of[i] >= s:
                    self.rows4[i] = lp[row_of[i] - s]
                ptr += 1
            if want_dll:
                running = _prefix_sums(x, s, e, lp, running, ev, ev_val)
                if e in self.at_snapshot and e < L:
                    self._queue(e, clone_state(state))
            s = e
        self._flush(final=True)
        self.S = dict(zip(ev.tolist(), ev_val.tolist(), strict=True))
        self.S[0] = 0.0

    def _pass_call(self, s: int, e: int, state):
        t = time.perf_counter()
        seg = torch.from_numpy(self.x[s:e].astype(np.int64))[None].to(self.dev)  # (1, e - s)
        lp, state = self.scorer.log_probs(seg, state)
        lp = as_tensor(lp)[0].double().cpu().numpy()  # (e - s, 4)
        if self.emb is not None:
            self.emb.pass_rows(s, self.tap.take()[0])  # hidden (e - s, d_model) of x[s:e]
        self.stats["pass_s"] += time.perf_counter() - t
        self.stats["pass_calls"] += 1
        return lp, state

    # ---- the ALT re-runs

    def _queue(self, b: int, state) -> None:
        self.pending.extend((i, state) for i in self.at_snapshot[b])
        self._flush()

    def _flush(self, final: bool = False) -> None:
        while self.pending and (final or len(self.pending) >= self.batch_size):
            take, self.pending = self.pending[: self.batch_size], self.pending[self.batch_size :]
            t = time.perf_counter()
            self.stats["rerun_tokens"] += self._rerun(take)
            self.stats["rerun_s"] += time.perf_counter() - t
            self.stats["rerun_calls"] += 1

    def _rerun(self, take: list[tuple[int, object]]) -> int:
        """One batch of ALT re-runs x[b:q] + ALT + tail from their snapshots: fills alt_ll /
        alt_terms (and the ALT pools with EMB). Returns the tokens run (batch x padded length)."""
        x, scorer = self.x, self.scorer
        seqs, starts = [], []  # per row: tokens, index of the ALT allele in them
        for i, _ in take:
            c, b = self.changes[i], int(self.bstart[i])
            down = x[c.q + c.ref.size : c.q + c.ref.size + int(self.tail[i])]
            seqs.append(np.concatenate([x[b : c.q], c.alt, down]).astype(np.int64))
            starts.append(c.q - b)
        toks = np.full((len(seqs), max(s.size for s in seqs)), N, dtype=np.int64)  # right padding: never read
        for r, s in enumerate(seqs):
            toks[r, : s.size] = s
        state = stack_states([st if st is not None else scorer.init_state(1) for _, st in take])
        lp, _ = scorer.log_probs(torch.from_numpy(toks).to(self.dev), state)
        lp = as_tensor(lp).double().cpu().numpy()  # (batch, lmax, 4): row r predicts toks[r + 1]
        if self.emb is not None:
            hid = self.tap.take()  # (batch, lmax, d_model): h_t has read toks[t]
            for r, (i, _) in enumerate(take):
                k, a = starts[r], self.changes[i].alt.size
                self.emb.alt_pool(i, hid[r, k : k + a + int(self.tail[i])].double().mean(0))
        for r, (i, _) in enumerate(take):
            seq, k = seqs[r], starts[r]
            tgt = np.arange(max(k, 1), seq.size)  # ALT allele + downstream positions in seq
            code = seq[tgt] - 4
            good = code < 4  # N targets contribute 0 (same on the REF side)
            ll = float(lp[r, tgt[good] - 1, code[good]].sum())
            nterm = int(tgt.size)
            if k == 0 and self.changes[i].q >= 1:  # the first ALT base is predicted by pass row q - 1
                ll += float(self.rows4[i, int(self.changes[i].alt[0]) - 4])
                nterm += 1
            self.alt_ll[i], self.alt_terms[i] = ll, nterm
        return int(toks.size)

    # ---- the scores

    def result(self) -> StrandResult:
        n = len(self.changes)
        llr = self._llr() if self.want_llr and n else np.full(n, np.nan)
        dll, dll_norm = self._dll() if self.want_dll and n else (np.full(n, np.nan), np.full(n, np.nan))
        cos, l2 = (self.emb.cos, self.emb.l2) if self.emb is not None else (np.full(n, np.nan),) * 2
        return StrandResult(llr, dll, dll_norm, self.edge, cos, l2)

    def _llr(self) -> np.ndarray:
        n = len(self.changes)
        llr = np.full(n, np.nan)
        ok = self.is_snv & (self.q >= 1)
        ri = np.array([int(c.ref[0]) - 4 for c in self.changes])
        ai = np.array([int(c.alt[0]) - 4 for c in self.changes])
        idx = np.nonzero(ok)[0]
        llr[idx] = self.rows4[idx, ai[idx]] - self.rows4[idx, ri[idx]]
        return llr

    def _dll(self) -> tuple[np.ndarray, np.ndarray]:
        n, S = len(self.changes), self.S
        dll, dll_norm = np.full(n, np.nan), np.full(n, np.nan)
        for i in range(n):
            q, m, wd, tail = int(self.q[i]), int(self.m[i]), int(self.wd[i]), int(self.tail[i])
            ref_ll = S[q + m + wd] - S[q]
            n_ref = m + wd - (1 if q == 0 else 0)
            alt_ll, n_alt = float(self.alt_ll[i]), int(self.alt_terms[i])
            if tail < wd:  # downstream beyond the scorer's context: same as the pass
                alt_ll += S[q + m + wd] - S[q + m + tail]
                n_alt += wd - tail
            dll[i] = alt_ll - ref_ll
            dll_norm[i] = alt_ll / max(n_alt, 1) - ref_ll / max(n_ref, 1)
        return dll, dll_norm


def _prefix_sums(x: np.ndarray, s: int, e: int, lp: np.ndarray, running: float, ev: np.ndarray,
                 ev_val: np.ndarray) -> float:
    """Fill ev_val at the positions ev of S(t) that segment [s, e) reaches; returns S at its end.

    The segment's rows predict targets x[s+1 .. min(e, L-1)]."""
    nt = min(e, int(x.size) - 1) - s
    code = x[s + 1 : s + 1 + nt].astype(np.int64) - 4  # (nt,) target base 0..3, 4 = N
    vals = lp[np.arange(nt), np.minimum(code, 3)] if nt > 0 else np.zeros(0)
    vals = np.where(code > 3, 0.0, vals)  # N targets contribute 0, as in the re-runs
    P = running + np.concatenate([[0.0], np.cumsum(vals)])  # S(s+1) .. S(s+1+nt)
    lo, hi = np.searchsorted(ev, [s + 1, s + 1 + nt + 1])
    ev_val[lo:hi] = P[ev[lo:hi] - s - 1]
    return float(P[-1])


def snapshot_positions(q: np.ndarray, every: int) -> np.ndarray:
    """Per variant, the pass position b <= q whose state its ALT re-run starts from.

    Greedy over the sorted variant positions: a snapshot at the first variant of a cluster,
    the next at the first variant >= `every` bases further on. Every re-run prefix x[b:q] is
    < every bases, a lone variant has none, and a dense run of variants costs one pass cut
    per `every` bases (the cuts are the pass's only extra calls).
    """
    uq = np.unique(q)  # (u,) sorted
    snaps = []
    for p in uq.tolist():
        if not snaps or p - snaps[-1] >= every:
            snaps.append(p)
    sn = np.asarray(snaps, dtype=np.int64)
    return sn[np.searchsorted(sn, q, side="right") - 1] if q.size else np.zeros(0, np.int64)
