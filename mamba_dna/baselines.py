"""The honest bars: an order-k Markov language model and k-mer profiles.

Every figure mamba-dna reports has a k-mer baseline beside it (FACTS.md: an order-6 Markov
model reaches ~1.95 bits/base on a bacterial genome; k-mer profiles separate species at
~90-98%). Both are vectorised with numpy: no Python loop per base.

MarkovModel
    P(x_t | x_{t-k} .. x_{t-1}) from counts over A/C/G/T with add-`pseudocount` smoothing,
    counted on both strands by default. Tables for every order 0..k are kept, so:
    * contexts that contain N (or a special token, or the start of a sequence) back off to
      the longest clean suffix: if the last j < k bases before t are A/C/G/T and the one
      before is not, the order-j table predicts x_t (j = 0: base composition). Nothing is
      skipped at prediction time, so every position has a probability;
    * at fitting time only (context, target) pairs whose j context bases and target are all
      A/C/G/T are counted into the order-j table;
    * `best_markov` fits the largest order once and evaluates every lower order from the
      same counts.
    Implements the scorer protocol (`log_probs(tokens, state)`; state = last k tokens) so
    `score`, `pretrain`'s evaluation and `classify` treat it like the network.

Context index convention (internal): the most recent base is the least significant base-4
digit, so the order-j context index is the order-k index modulo 4**j.

kmer_profile
    Normalised k-mer frequencies, index = k-mer in lexicographic order (AA..A = 0,
    TT..T = 4**k - 1, first base most significant); k-mers containing N are not counted.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import atomic_path
from mamba_dna.tokenizer import MASK, A, reverse_complement

MAX_ORDER = 14  # 4**15 counts would not fit in memory on a laptop
FORMAT = "mamba-dna-markov"


def _codes(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token ids -> (base code 0..3 as int64 (0 where not a base), is-base bool)."""
    t = np.asarray(tokens).astype(np.int64, copy=False)
    code = t - A  # A C G T -> 0 1 2 3
    ok = (code >= 0) & (code < 4)
    return np.where(ok, code, 0), ok


def _run_lengths(ok: np.ndarray) -> np.ndarray:
    """Number of consecutive True values ending at each position along the last axis."""
    L = ok.shape[-1]
    pos = np.arange(L, dtype=np.int64)
    last_bad = np.where(ok, -1, pos)  # (..., L)
    last_bad = np.maximum.accumulate(last_bad, axis=-1)
    return pos - last_bad  # (..., L): 0 where not ok


def _context_index(code: np.ndarray, order: int) -> np.ndarray:
    """idx[..., p] = sum_i code[..., p - i] * 4**i for i < order (missing history -> 0)."""
    idx = np.zeros(code.shape, dtype=np.int64)
    for i in range(order):
        if i == 0:
            idx += code
        else:
            idx[..., i:] += code[..., :-i] << (2 * i)
    return idx


def _save_npz(path: Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """A baseline file: JSON metadata + named arrays in one compressed .npz (no pickle),
    written atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)


def _read_npz(path: Path, fmt: str | None, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, arrays) of a baseline file written by `_save_npz`; `fmt` (None: any) must
    match its "format". Errors name the file (InputError)."""
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            arrays = {k: z[k] for k in z.files if k != "meta"}
    except (KeyError, ValueError, OSError) as e:
        raise InputError(f"{path}: unreadable {what} file ({e})") from e
    if fmt is not None and meta.get("format") != fmt:
        raise InputError(f"{path}: not a mamba-dna {what} (format {meta.get('format')!r})")
    return meta, arrays


class MarkovModel:
    """Order-k Markov LM over A/C/G/T (see the module docstring).

    `MarkovModel(6).fit([ids, ...])`; `.log_probs(tokens, state)`; `.bits_per_base(arrays)`;
    `.save(path)` / `MarkovModel.load(path)` (.npz of counts + JSON metadata, no pickle).
    """

    def __init__(self, order: int = 6, pseudocount: float = 0.5):
        if not 0 <= int(order) <= MAX_ORDER:
            raise ConfigError(f"Markov order {order} is outside 0..{MAX_ORDER}")
        if not pseudocount > 0:
            raise ConfigError(f"Markov pseudocount must be > 0, got {pseudocount}")
        self.order = int(order)
        self.pseudocount = float(pseudocount)
        # counts[j]: (4**j, 4) float64, row = context index, column = next base (ACGT)
        self.counts: list[np.ndarray] = [np.zeros((4**j, 4)) for j in range(self.order + 1)]
        self.n_fitted = 0  # targets counted into the top-order table

    @property
    def name(self) -> str:
        return f"markov-{self.order}"

    @property
    def context_length(self) -> int:
        """Predictions depend on the last `order` tokens only (lets `score` skip re-runs)."""
        return self.order

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, arrays: Iterable[np.ndarray], both_strands: bool = True) -> MarkovModel:
        """Add counts from token arrays (uint8 ids, any length); returns self."""
        for arr in arrays:
            arr = np.asarray(arr).reshape(-1)
            seqs = [arr, reverse_complement(arr)] if both_strands else [arr]
            for s in seqs:
                self._count(s)
        return self

    def _count(self, seq: np.ndarray) -> None:
        if seq.size < 1:
            return
        code, ok = _codes(seq)  # (L,)
        run = _run_lengths(ok)  # clean bases ending at each position
        idx = _context_index(code, self.order)  # (L,) order-k index ending at p
        tgt = code[1:]  # targets x_{p+1}
        tgt_ok = ok[1:]
        ctx_run = run[:-1]  # clean context length available for target p+1
        ctx_idx = idx[:-1]
        for j in range(self.order + 1):
            m = tgt_ok & (ctx_run >= j)
            if j == 0:
                # every clean base is an order-0 target, the first one included
                self.counts[0][0] += np.bincount(code[ok], minlength=4)
                continue
            flat = (ctx_idx[m] & ((1 << (2 * j)) - 1)) * 4 + tgt[m]
            self.counts[j] += np.bincount(flat, minlength=4 ** (j + 1)).reshape(-1, 4)
        self.n_fitted += int((tgt_ok & (ctx_run >= self.order)).sum())

    def truncated(self, order: int) -> MarkovModel:
        """The order-`order` model from the same counts (shares the tables, no copy)."""
        if order > self.order:
            raise ConfigError(f"cannot truncate an order-{self.order} model to order {order}")
        m = MarkovModel(order, self.pseudocount)
        m.counts = self.counts[: order + 1]
        return m

    # ---- scorer protocol -----------------------------------------------------------------
    def init_state(self, batch: int = 1) -> np.ndarray:
        """An empty history: k PAD tokens (not bases, so the first predictions back off)."""
        return np.zeros((batch, self.order), dtype=np.int64)

    def _log_probs_np(self, tokens: np.ndarray, state: np.ndarray | None):
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim == 1:
            tokens = tokens[None]
        B, L = tokens.shape
        k = self.order
        if state is None:
            state = self.init_state(B)
        state = np.asarray(state, dtype=np.int64).reshape(B, k)
        ext = np.concatenate([state, tokens], axis=1)  # (B, k + L)
        code, ok = _codes(ext)
        run = np.minimum(_run_lengths(ok), k)  # (B, k + L) effective order at each position
        idx = _context_index(code, k)  # (B, k + L)
        run, idx = run[:, k:], idx[:, k:]  # rows for the L new tokens: context ends at t
        a = self.pseudocount
        lp = np.empty((B, L, 4), dtype=np.float32)  # (batch, L, 4)
        for j in range(k + 1):
            m = run == j  # (B, L)
            if not m.any():
                continue
            c = self.counts[j][idx[m] & ((1 << (2 * j)) - 1)] + a  # (n, 4)
            lp[m] = np.log(c) - np.log(c.sum(axis=1, keepdims=True))
        new_state = ext[:, -k:] if k else np.zeros((B, 0), dtype=np.int64)  # (B, k)
        return lp, new_state.copy()

    def log_probs(self, tokens, state=None):
        """Scorer protocol: tokens (batch, L) -> (lp (batch, L, 4) float32, state (batch, k)).

        Row t = log P(base at t+1 | tokens[..t] and state) over A, C, G, T. numpy in ->
        numpy out; torch in -> torch out (CPU computation, result on the input's device).
        """
        try:
            import torch
        except ImportError:  # pragma: no cover
            torch = None
        if torch is not None and isinstance(tokens, torch.Tensor):
            st = state.cpu().numpy() if isinstance(state, torch.Tensor) else state
            lp, new = self._log_probs_np(tokens.cpu().numpy(), st)
            return (
                torch.from_numpy(lp).to(tokens.device),
                torch.from_numpy(new).to(tokens.device),
            )
        return self._log_probs_np(tokens, state)

    # ---- evaluation ----------------------------------------------------------------------
    def bits_per_base(self, arrays: Iterable[np.ndarray], chunk: int = 1 << 20) -> float:
        """Mean -log2 P over every A/C/G/T target that has a preceding token in its array.

        Targets that are N or specials are ignored; contexts with N back off (see module
        docstring). Each array is streamed in chunks with carried state.
        """
        total, n = 0.0, 0
        for arr in arrays:
            arr = np.asarray(arr).reshape(-1)
            state, prev = None, None  # prev: last row of the previous piece (4,)
            for s in range(0, arr.size, chunk):
                piece = arr[s : s + chunk].astype(np.int64)[None]  # (1, l)
                lp, state_new = self._log_probs_np(piece, state)
                # row t predicts piece[t + 1]; the first token of the piece was predicted by
                # the last row of the previous piece (kept in `prev`)
                tgt_code, tgt_ok = _codes(piece[0])
                if prev is not None:
                    if tgt_ok[0]:
                        total -= float(prev[tgt_code[0]])
                        n += 1
                rows = lp[0, :-1]  # (l - 1, 4)
                t_code, t_ok = tgt_code[1:], tgt_ok[1:]
                total -= float(rows[np.arange(rows.shape[0])[t_ok], t_code[t_ok]].astype(np.float64).sum())
                n += int(t_ok.sum())
                prev = lp[0, -1]
                state = state_new
        if n == 0:
            raise InputError("bits_per_base: no A/C/G/T targets in the given arrays")
        return total / n / math.log(2)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz (counts for orders 0..k + JSON metadata); atomic."""
        path = Path(path)
        meta = {
            "format": FORMAT,
            "version": 1,
            "order": self.order,
            "pseudocount": self.pseudocount,
            "n_fitted": self.n_fitted,
            "index": "most recent base = least significant base-4 digit; columns A C G T",
        }
        _save_npz(path, meta, {f"counts_{j}": c for j, c in enumerate(self.counts)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> MarkovModel:
        path = Path(path)
        meta, z = _read_npz(path, FORMAT, "Markov model")
        try:
            m = cls(meta["order"], meta["pseudocount"])
            m.counts = [z[f"counts_{j}"].astype(np.float64) for j in range(m.order + 1)]
            m.n_fitted = int(meta.get("n_fitted", 0))
        except (KeyError, ValueError) as e:
            raise InputError(f"{path}: unreadable Markov model file ({e})") from e
        for j, c in enumerate(m.counts):
            if c.shape != (4**j, 4):
                raise InputError(f"{path}: counts_{j} has shape {c.shape}, expected {(4**j, 4)}")
        return m


def best_markov(
    train: Sequence[np.ndarray],
    val: Sequence[np.ndarray],
    orders: Iterable[int] = range(0, 13),
    pseudocount: float = 0.5,
    both_strands: bool = True,
) -> tuple[MarkovModel, dict[int, float]]:
    """Fit the largest order once, evaluate each order on `val`; return (best, {order: bpb})."""
    orders = sorted(set(int(o) for o in orders))
    if not orders:
        raise ConfigError("best_markov: no orders given")
    full = MarkovModel(orders[-1], pseudocount).fit(train, both_strands=both_strands)
    table = {o: full.truncated(o).bits_per_base(val) for o in orders}
    best = min(table, key=table.get)
    return full.truncated(best), table


def kmer_profile(tokens, k: int, both_strands: bool = False, canonical: bool = False) -> np.ndarray:
    """Normalised k-mer frequencies: float32 (4**k,), lexicographic k-mer index.

    k-mers containing N or specials are not counted. `both_strands` adds the reverse
    complement's k-mers (strand-symmetric profile); `canonical` folds each k-mer onto
    min(kmer, revcomp(kmer)) (entries of non-canonical k-mers are 0). All zeros when the
    sequence has no clean k-mer.
    """
    if not 1 <= k <= 12:
        raise ConfigError(f"kmer_profile: k={k} is outside 1..12")
    arr = np.asarray(tokens).reshape(-1)
    code, ok = _codes(arr)
    counts = np.zeros(4**k, dtype=np.float64)
    if arr.size >= k:
        run = _run_lengths(ok)
        # lexicographic index of the k-mer ending at p: first base most significant
        idx = np.zeros(arr.size, dtype=np.int64)
        for i in range(k):
            if i == 0:
                idx += code
            else:
                idx[i:] += code[:-i] << (2 * i)
        # idx above has the most recent base least significant = lexicographic order already
        valid = run >= k
        counts += np.bincount(idx[valid], minlength=4**k)
    if both_strands or canonical:
        rc = _revcomp_index(k)
        if canonical:
            folded = np.zeros_like(counts)
            np.add.at(folded, np.minimum(np.arange(4**k), rc), counts)
            counts = folded
        else:
            counts = counts + counts[rc]
    s = counts.sum()
    return (counts / s if s > 0 else counts).astype(np.float32)


def _revcomp_index(k: int) -> np.ndarray:
    """rc[i] = lexicographic index of the reverse complement of k-mer i."""
    i = np.arange(4**k, dtype=np.int64)
    out = np.zeros_like(i)
    for d in range(k):
        digit = (i >> (2 * d)) & 3  # base d positions from the end
        out |= (3 - digit) << (2 * (k - 1 - d))
    return out


# ============================================================================ two-sided k-mer

KMER2_MAX_K = 8  # 16 context bases: keys fit an int64 with room; tables are sparse (O(n) memory)
KMER2_AUTO_MAX_K = 6  # kmer2:auto tries k = 0..min(6, log4(bases)/2 + 1)
KMER2_FORMAT = "mamba-dna-kmer2"
# smoothing strengths best_kmer2 chooses from (on validation, with k). Measured: lambda phage
# (48 kb) and H. pylori (1.65 Mb) prefer 32-64; 2 lets k >= 4 overfit badly on small genomes.
KMER2_ALPHAS = (2.0, 8.0, 32.0, 128.0)
KMER2_DEFAULT_ALPHA = 32.0
KMER2_MAX_WILDCARDS = 2  # MASKs marginalised per context (4**2 lookups; fixed: _log_probs_np expands at most 2)


def _two_sided(
    ids: np.ndarray, k: int, wild: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token ids (..., L) -> (code, is-base, key, order), each (..., L).

    key[..., i] interleaves the k bases on each side of i: base i-d is base-4 digit 2(d-1),
    base i+d digit 2(d-1)+1 (d = 1..k), so the order-j key is key % 16**j (nested, as the
    Markov index). order[..., i] = min(clean bases just left of i, clean just right, k): a
    context containing N, MASK, a special or a sequence end backs off symmetrically.
    Token i itself never enters its own key. `wild` (..., L) bool marks positions that count
    as clean for `order` (their key digit is 0: the caller fills them in).
    """
    code, ok = _codes(ids)  # (..., L)
    L = ok.shape[-1]
    clean = ok if wild is None else ok | wild
    run_left = _run_lengths(clean)  # clean bases ending at p
    run_right = _run_lengths(clean[..., ::-1])[..., ::-1]  # clean bases starting at p
    left = np.zeros_like(run_left)
    right = np.zeros_like(run_right)
    left[..., 1:] = run_left[..., :-1]  # clean bases ending at i-1
    right[..., :-1] = run_right[..., 1:]  # clean bases starting at i+1
    order = np.minimum(np.minimum(left, right), k)
    key = np.zeros(code.shape, dtype=np.int64)
    for d in range(1, min(k, L - 1) + 1):
        key[..., d:] |= code[..., :-d] << (4 * (d - 1))  # left base i-d
        key[..., :-d] |= code[..., d:] << (4 * (d - 1) + 2)  # right base i+d
    return code, ok, key, order


class TwoSidedKmer:
    """P(base at i | k bases left of i, k bases right of i): the honest bar for masked models.

    Counts over A/C/G/T on both strands by default (the reverse complement of a context is
    another context). Tables are kept for every order j = 0..k, sparse: the sorted contexts
    seen in training (int64 keys) with their (n, 4) target counts, so memory is O(training
    bases) whatever k. Prediction backs off in two ways:
    * a context with N, a special or a sequence end within j bases on either side uses the
      longest clean symmetric order j (j = 0: base composition);
    * a MASK in the context (an MLM batch's other masked positions) is marginalised: the
      counts of its 4 fillings are summed (up to KMER2_MAX_WILDCARDS = 2 masks; the order
      stops below a third). Without this, 15% masking leaves a 6-base context clean only
      ~22% of the time and the baseline would be handicapped at exactly the positions an
      MLM validation scores;
    * smoothing is hierarchical: P_j(x | c) = (n_j(c, x) + alpha * P_{j-1}(x | c')) /
      (n_j(c) + alpha), c' the inner j-1 bases on each side, P_{-1} uniform. An unseen
      context therefore predicts its shorter context's distribution, not uniform; k and
      alpha are chosen on validation (`best_kmer2`).
    Only (context, target) pairs whose target and j bases on each side are clean count
    into the order-j table.

    Masked-model protocol: `masked_log_probs(ids (B, L)) -> (B, L, 4)` log P over A, C, G, T
    at every position from its neighbours (token i itself is ignored, so a MASK there changes
    nothing); `is_causal = False`. `.save(path)` / `TwoSidedKmer.load(path)`: one .npz (JSON
    metadata + arrays, no pickle).
    """

    is_causal = False

    def __init__(self, k: int = 4, alpha: float = KMER2_DEFAULT_ALPHA):
        if not 0 <= int(k) <= KMER2_MAX_K:
            raise ConfigError(f"two-sided k-mer k={k} is outside 0..{KMER2_MAX_K}")
        if not alpha > 0:
            raise ConfigError(f"two-sided k-mer alpha must be > 0, got {alpha}")
        self.k = int(k)
        self.alpha = float(alpha)
        # keys[j]: (m_j,) int64 sorted contexts; counts[j]: (m_j, 4) uint32 targets A C G T
        self.keys: list[np.ndarray] = [np.zeros(1 if j == 0 else 0, np.int64) for j in range(self.k + 1)]
        self.counts: list[np.ndarray] = [np.zeros((1 if j == 0 else 0, 4), np.uint32) for j in range(self.k + 1)]
        self.n_fitted = 0  # targets counted into the top-order table

    @property
    def name(self) -> str:
        return f"kmer2-{self.k}"

    @property
    def context_length(self) -> int:
        """Predictions depend on the `k` tokens on each side only."""
        return self.k

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, arrays: Iterable[np.ndarray], both_strands: bool = True) -> TwoSidedKmer:
        """Add counts from token arrays (uint8 ids, any length); returns self."""
        flats: list[list[np.ndarray]] = [[] for _ in range(self.k + 1)]
        pending = 0  # observations held in `flats`: merged into the tables every ~16M

        def flush():
            for j in range(self.k + 1):
                if flats[j]:
                    self._add(j, np.concatenate(flats[j]))
                    flats[j].clear()

        for arr in arrays:
            arr = np.asarray(arr).reshape(-1)
            for s in [arr, reverse_complement(arr)] if both_strands else [arr]:
                if s.size == 0:
                    continue
                code, ok, key, order = _two_sided(s, self.k)  # (L,)
                for j in range(self.k + 1):
                    m = ok & (order >= j)
                    flats[j].append(((key[m] & ((1 << (4 * j)) - 1)) << 2) | code[m])
                    pending += flats[j][-1].size
                self.n_fitted += int((ok & (order >= self.k)).sum())
                if pending >= 1 << 24:
                    flush()
                    pending = 0
        flush()
        return self

    def _add(self, j: int, flat: np.ndarray) -> None:
        """Merge (key << 2 | target) observations into the order-j table."""
        if flat.size == 0:
            return
        pair, n = np.unique(flat, return_counts=True)  # unique (context, target) pairs
        keys, inv = np.unique(pair >> 2, return_inverse=True)
        cnt = np.zeros((keys.size, 4), np.uint32)
        cnt[inv, pair & 3] = n  # pairs are unique: plain assignment
        if self.keys[j].size:
            n_old = self.keys[j].size
            keys, inv = np.unique(np.concatenate([self.keys[j], keys]), return_inverse=True)
            merged = np.zeros((keys.size, 4), np.uint32)
            merged[inv[:n_old]] += self.counts[j]  # each side's keys are unique within it
            merged[inv[n_old:]] += cnt
            cnt = merged
        self.keys[j], self.counts[j] = keys, cnt

    def truncated(self, k: int, alpha: float | None = None) -> TwoSidedKmer:
        """The k-context model from the same counts (shares the tables, no copy); `alpha`
        replaces the smoothing strength when given."""
        if k > self.k:
            raise ConfigError(f"cannot truncate a kmer2-{self.k} model to k={k}")
        m = TwoSidedKmer(k, self.alpha if alpha is None else alpha)
        m.keys, m.counts = self.keys[: k + 1], self.counts[: k + 1]
        return m

    # ---- masked-model protocol -------------------------------------------------------------
    def _lookup(self, j: int, variants: np.ndarray) -> np.ndarray:
        """Order-j counts summed over context keys variants (n, v) -> (n, 4) float64."""
        keys_j = self.keys[j]
        flat = variants.reshape(-1)
        at = np.minimum(np.searchsorted(keys_j, flat), keys_j.size - 1)
        hit = keys_j[at] == flat
        c = np.zeros((flat.size, 4))
        c[hit] = self.counts[j][at[hit]]
        return c.reshape(variants.shape[0], -1, 4).sum(axis=1)

    def _log_probs_np(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[None]
        B, L = ids.shape
        k = self.k
        wild = ids == MASK  # (B, L) a MASK in a context is marginalised over its 4 bases
        _, _, key, order = _two_sided(ids, k, wild=wild)
        # the two nearest MASKs in the context (distance d, key digit shift) and the third's
        # distance: contexts with at most MAX_WILDCARDS masks sum the counts of every filling
        big = k + 1
        d1, d2, d3 = (np.full((B, L), big, np.int64) for _ in range(3))
        s1, s2 = np.zeros((B, L), np.int64), np.zeros((B, L), np.int64)
        cnt = np.zeros((B, L), np.int64)
        for d in range(1, min(k, L - 1) + 1):
            for side in (0, 1):  # left neighbour i-d (shift 4(d-1)), right i+d (4(d-1)+2)
                m = np.zeros((B, L), bool)
                if side == 0:
                    m[:, d:] = wild[:, :-d]
                else:
                    m[:, :-d] = wild[:, d:]
                shift = 4 * (d - 1) + 2 * side
                first, second, third = m & (cnt == 0), m & (cnt == 1), m & (cnt == 2)
                d1[first], s1[first] = d, shift
                d2[second], s2[second] = d, shift
                d3[third] = d
                cnt += m
        order = np.minimum(order, d3 - 1).reshape(-1)  # (B*L,) effective order
        key, d1, d2, s1, s2 = (x.reshape(-1) for x in (key, d1, d2, s1, s2))
        fill = np.arange(4, dtype=np.int64)
        a = self.alpha
        c0 = self.counts[0][0].astype(np.float64)
        p0 = (c0 + a / 4) / (c0.sum() + a)  # order 0: composition, uniform prior
        P = np.broadcast_to(p0, (key.size, 4)).copy()  # (B*L, 4) float64
        for j in range(1, k + 1):
            idx = np.flatnonzero(order >= j)
            if idx.size == 0 or self.keys[j].size == 0:
                break
            kj = key[idx] & ((1 << (4 * j)) - 1)  # MASK digits are 0 in the key
            w = (d1[idx] <= j).astype(np.int64) + (d2[idx] <= j)  # masks inside this order
            c = np.empty((idx.size, 4))
            for nw in (0, 1, 2):
                g = np.flatnonzero(w == nw)
                if g.size == 0:
                    continue
                v = kj[g, None]  # (n, 1)
                if nw >= 1:
                    v = v + (fill[None, :] << s1[idx[g], None])  # (n, 4)
                if nw == 2:
                    v = (v[:, :, None] + (fill[None, None, :] << s2[idx[g], None, None])).reshape(g.size, 16)
                c[g] = self._lookup(j, v)
            # unseen contexts (c = 0) keep the order j-1 distribution
            P[idx] = (c + a * P[idx]) / (c.sum(axis=1, keepdims=True) + a)
        return np.log(P).astype(np.float32).reshape(B, L, 4)

    def masked_log_probs(self, ids):
        """ids (B, L) -> log P(base at i | neighbours) (B, L, 4) float32 over A, C, G, T.

        numpy in -> numpy out; torch in -> torch out (CPU computation, on the input's device).
        """
        try:
            import torch
        except ImportError:  # pragma: no cover
            torch = None
        if torch is not None and isinstance(ids, torch.Tensor):
            lp = self._log_probs_np(ids.cpu().numpy())
            return torch.from_numpy(lp).to(ids.device)
        return self._log_probs_np(ids)

    # ---- evaluation ----------------------------------------------------------------------
    def bits_per_base(self, arrays: Iterable[np.ndarray], chunk: int = 1 << 20) -> float:
        """Mean -log2 P(base i | clean neighbours) over every A/C/G/T of the arrays.

        Each position is predicted with every other token visible (leave-one-out, no other
        masks); contexts do not cross array boundaries. Streamed in chunks with a k halo.
        """
        total, n, h = 0.0, 0, self.k
        for arr in arrays:
            arr = np.asarray(arr).reshape(-1)
            for s in range(0, arr.size, chunk):
                lo, hi = max(0, s - h), min(arr.size, s + chunk + h)
                lp = self._log_probs_np(arr[lo:hi])[0, s - lo : s - lo + min(chunk, arr.size - s)]  # (l, 4)
                code, ok = _codes(arr[s : s + chunk])
                total -= float(lp[np.flatnonzero(ok), code[ok]].astype(np.float64).sum())
                n += int(ok.sum())
        if n == 0:
            raise InputError("bits_per_base: no A/C/G/T targets in the given arrays")
        return total / n / math.log(2)

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz (sparse tables for orders 0..k + JSON metadata); atomic."""
        meta = {
            "format": KMER2_FORMAT,
            "version": 1,
            "k": self.k,
            "alpha": self.alpha,
            "n_fitted": self.n_fitted,
            "index": "key digit 2(d-1) = base i-d, 2(d-1)+1 = base i+d (base 4); columns A C G T",
        }
        arrays = {}
        for j in range(self.k + 1):
            arrays[f"keys_{j}"], arrays[f"counts_{j}"] = self.keys[j], self.counts[j]
        _save_npz(Path(path), meta, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TwoSidedKmer:
        path = Path(path)
        meta, z = _read_npz(path, KMER2_FORMAT, "two-sided k-mer model")
        try:
            m = cls(meta["k"], meta["alpha"])
            m.keys = [z[f"keys_{j}"].astype(np.int64) for j in range(m.k + 1)]
            m.counts = [z[f"counts_{j}"].astype(np.uint32) for j in range(m.k + 1)]
            m.n_fitted = int(meta.get("n_fitted", 0))
        except (KeyError, ValueError) as e:
            raise InputError(f"{path}: unreadable two-sided k-mer model file ({e})") from e
        for j in range(m.k + 1):
            kj, cj = m.keys[j], m.counts[j]
            if kj.ndim != 1 or cj.shape != (kj.size, 4) or (kj.size > 1 and not (np.diff(kj) > 0).all()):
                raise InputError(f"{path}: keys_{j}/counts_{j} are not a sorted table of shape (n,)/(n, 4)")
        return m


def best_kmer2(
    train: Sequence[np.ndarray],
    val: Sequence[np.ndarray],
    ks: Iterable[int] = range(0, KMER2_AUTO_MAX_K + 1),
    alphas: Iterable[float] = KMER2_ALPHAS,
    both_strands: bool = True,
) -> tuple[TwoSidedKmer, dict[int, float]]:
    """Fit the largest k once, evaluate every (k, alpha) on `val` from the same counts.

    `val`: token arrays (every base predicted from its clean neighbours), or
    `mlm.MaskedBatch`es (bits at their chosen positions, other masks in the context: choose
    k and alpha for the figure an MLM validation reports). Returns (best model, {k: validation bits/base at that k's best alpha}); the model's
    `.k` and `.alpha` are the pair with the lowest validation bits/base.
    """
    ks = sorted(set(int(k) for k in ks))
    alphas = sorted(set(float(a) for a in alphas))
    if not ks or not alphas:
        raise ConfigError("best_kmer2: no k or no alpha given")
    full = TwoSidedKmer(ks[-1], alphas[0]).fit(train, both_strands=both_strands)
    scores = {(k, a): _kmer2_val_bits(full.truncated(k, a), val) for k in ks for a in alphas}
    table = {k: min(scores[k, a] for a in alphas) for k in ks}
    k_best, a_best = min(scores, key=scores.get)
    return full.truncated(k_best, a_best), table


def _kmer2_val_bits(model: TwoSidedKmer, val) -> float:
    """Validation bits/base of `model` on arrays or on masked batches (see best_kmer2)."""
    val = list(val)
    if val and hasattr(val[0], "input_ids"):
        from mamba_dna.mlm import masked_bits  # torch only when masked batches are given

        total = n = 0
        for b in val:
            bits, c = masked_bits(model.masked_log_probs(b.input_ids), b)
            total, n = total + bits, n + c
        if n == 0:
            raise InputError("best_kmer2: the masked validation batches have no chosen position")
        return total / n
    return model.bits_per_base(val)


def parse_kmer2_spec(spec: str) -> int | None:
    """'kmer2:auto' -> None, 'kmer2:K' -> K (0..KMER2_MAX_K); anything else a ConfigError."""
    head, _, arg = str(spec).partition(":")
    if head == "kmer2" and arg == "auto":
        return None
    if head == "kmer2" and arg.isdigit() and int(arg) <= KMER2_MAX_K:
        return int(arg)
    raise ConfigError(f"--model {spec!r}: expected kmer2:K (K an integer 0..{KMER2_MAX_K}) or kmer2:auto")


def kmer2_auto_ks(n_bases: int) -> range:
    """The k tried by kmer2:auto: 0..min(6, log4(bases)/2 + 1) (2k context bases need ~4**2k bases)."""
    top = int(min(KMER2_AUTO_MAX_K, max(1, math.log(max(n_bases, 4), 4) / 2 + 1)))
    return range(0, top + 1)


def kmer2_from_spec(
    spec: str, seqs: Sequence[np.ndarray], val_fraction: float = 0.1, alpha: float = KMER2_DEFAULT_ALPHA
) -> tuple[TwoSidedKmer, dict[int, float] | None]:
    """A fitted scorer for --model kmer2:K|kmer2:auto from token arrays (e.g. every record).

    kmer2:K fits on all of `seqs` (both strands) with smoothing `alpha`. kmer2:auto chooses k
    and alpha on the last `val_fraction` of each array (fitted on the rest), then refits on
    all; the second value is then the {k: validation bits/base} table to log (None for K).
    """
    k = parse_kmer2_spec(spec)
    seqs = [np.asarray(s).reshape(-1) for s in seqs]
    table = None
    if k is None:
        cut = [int(s.size * (1 - val_fraction)) for s in seqs]
        train = [s[:c] for s, c in zip(seqs, cut, strict=True)]
        val = [s[c:] for s, c in zip(seqs, cut, strict=True)]
        best, table = best_kmer2(train, val, kmer2_auto_ks(sum(s.size for s in train)))
        k, alpha = best.k, best.alpha
    return TwoSidedKmer(k, alpha).fit(seqs), table


def load_baseline(path: str | os.PathLike) -> MarkovModel | TwoSidedKmer:
    """A saved baseline .npz of either kind (dispatch on its `format`)."""
    path = Path(path)
    meta, _ = _read_npz(path, None, "baseline model")
    if meta.get("format") == KMER2_FORMAT:
        return TwoSidedKmer.load(path)
    return MarkovModel.load(path)
