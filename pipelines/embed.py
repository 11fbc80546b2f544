"""`mamba-dna embed`: pooled and per-position embeddings of genome windows or BED regions.

Setup: open the FASTA, fix the list of items (windows, BED regions or whole records) and
the batches they run in. Run: stream each batch through the model in pieces of `piece`
positions, carrying the recurrent state from piece to piece, so a megabase item costs the
memory of one piece (same numbers as one pass). Save: rows go into an HDF5 file (schema in
`mamba_dna.io.hdf5`) under a `.partial` name, flushed after every batch with the items'
`done` flags; `--resume` continues that file, and the finished file is renamed into place.
All HDF5 calls of a run happen on one writer thread fed through a queue bounded in bytes, so
compression and disk writes of piece k overlap the model's work on piece k+1 (h5py releases
the GIL inside HDF5; on a GPU node the whole write hides behind the forward pass). An error
on the writer thread stops the run with that error; the `done` flags written before it are
exact, so `--resume` continues from there. Per-position datasets are stored uncompressed by
default (embeddings compress by 7-14%; `--compression lzf|gzip`: see `mamba_dna.io.hdf5`).

Sharding: batches (not items) are dealt out round-robin to `--shard i/n`, and a batch's
composition never depends on the shard, so `embed merge` of the shards holds exactly the
numbers a single run writes.

Python API (numpy out)::

    from mamba_dna.pipelines.embed import embed_sequences, per_position
    X = embed_sequences(model, [ids0, ids1], pool="mean", rc_average=True)   # (2, d)
    H = per_position(model, ids0)                                            # (L, d)
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mamba_dna import log
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import sha256_file
from mamba_dna.io import hdf5
from mamba_dna.rankshard import parse_shard
from mamba_dna.tokenizer import PAD, reverse_complement

POOLS = ("mean", "max", "last", "none")
DTYPES = ("float32", "float16")


# --------------------------------------------------------------------------- core: streaming


class _Pooler:
    """Running mean / max / last over the valid positions of a batch, fed piece by piece.

    Pools on the model's device: only the (B, d) result moves to the host. Pieces without
    padding (the usual case: equal-length batches) take one reduction over the whole piece.
    """

    def __init__(self, mode: str, lengths: torch.Tensor, d: int, device: torch.device):
        self.mode, self.lengths = mode, [int(n) for n in lengths]  # valid length per row
        B = len(self.lengths)
        f64 = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        if mode == "max":
            self.acc = torch.full((B, d), -torch.inf, dtype=torch.float32, device=device)
        else:
            self.acc = torch.zeros(B, d, dtype=f64 if mode == "mean" else torch.float32,
                                   device=device)  # (B, d)

    def update(self, start: int, h: torch.Tensor) -> None:
        """h (B, l, d) float32: rows for positions start .. start+l-1."""
        l = h.shape[1]
        if self.mode == "last":
            for b, n in enumerate(self.lengths):
                if start < n <= start + l:  # the last valid position is in this piece
                    self.acc[b] = h[b, n - 1 - start]
            return
        valid = [min(max(n - start, 0), l) for n in self.lengths]  # valid rows per item
        if all(k == l for k in valid):
            if self.mode == "mean":
                self.acc += h.sum(1).to(self.acc.dtype)  # (B, d)
            else:
                torch.maximum(self.acc, h.amax(1), out=self.acc)
            return
        for b, k in enumerate(valid):  # padding: reduce each row over its valid part
            if k == 0:
                continue
            if self.mode == "mean":
                self.acc[b] += h[b, :k].sum(0).to(self.acc.dtype)
            else:
                torch.maximum(self.acc[b], h[b, :k].amax(0), out=self.acc[b])

    def result(self) -> torch.Tensor:
        """(B, d) float32 on the host."""
        if self.mode == "mean":
            n = torch.tensor(self.lengths, dtype=self.acc.dtype, device=self.acc.device)
            return (self.acc / n.clamp(min=1)[:, None]).float().cpu()
        return self.acc.cpu()


@torch.no_grad()
def stream_hidden(model, ids: torch.Tensor, layer: int | None, piece: int,
                  sink: Callable[[int, torch.Tensor], None]) -> None:
    """Run ids (B, L) through `model.hidden` in pieces with the state carried across.

    `sink(start, h)` receives h (B, l, d) for positions start .. start+l-1. Padding is on
    the right, so (the model being causal) it never changes a valid position.
    """
    state = None
    L = ids.shape[1]
    for s in range(0, L, piece):
        h, state = model.hidden(ids[:, s : s + piece], state=state, layer=layer)  # (B, l, d)
        sink(s, h)


def _batch_tensor(seqs: Sequence[np.ndarray], device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)  # (B,)
    L = int(lengths.max())
    ids = np.full((len(seqs), L), PAD, dtype=np.int64)  # (B, L) right-padded
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = s
    return torch.from_numpy(ids).to(device), lengths


def embed_batch(model, seqs: Sequence[np.ndarray], *, pool: str = "mean", layer: int | None = None,
                rc_average: bool = False, piece: int = 1 << 15,
                position_sink: Callable[[int, int, int, torch.Tensor, bool], None] | None = None,
                position_dtype: torch.dtype = torch.float32) -> np.ndarray | None:
    """Pooled embeddings (B, d) float32 of token arrays `seqs` (each (L_b,) uint8 ids).

    With `position_sink`, per-position rows are handed over piece by piece as
    `position_sink(b, start, end, h (end-start, d), is_rc)`: forward rows in order first,
    then (with rc_average) reverse-strand rows already flipped to forward coordinates, for
    the caller to average in place. Nothing of size (L, d) is ever held here. The rows are
    host tensors of `position_dtype`, cast on the model's device before the one copy to
    the host per piece (float16 halves that copy on a GPU).

    rc_average for pooled output averages the two strands' pooled vectors (for "last", the
    last position of each strand, which has seen the whole sequence).
    """
    device = next(model.parameters()).device
    ids, lengths = _batch_tensor(seqs, device)  # (B, L), (B,)
    d = int(model.config.d_model)
    strands = [False, True] if rc_average else [False]
    pooled = []
    for is_rc in strands:
        if is_rc:
            rc = [reverse_complement(np.asarray(s)) for s in seqs]
            ids, _ = _batch_tensor(rc, device)
        pooler = _Pooler(pool, lengths, d, device) if pool != "none" else None

        def sink(start, h, pooler=pooler, is_rc=is_rc):
            if pooler is not None:
                pooler.update(start, h)
            if position_sink is None:
                return
            h = h.to(position_dtype).cpu()  # (B, l, d); no copy when already fp32 on the CPU
            for b in range(h.shape[0]):
                n = int(lengths[b])
                e = min(start + h.shape[1], n)
                if e <= start:
                    continue
                rows = h[b, : e - start]  # (e-start, d)
                if is_rc:  # rc positions [start, e) = forward positions [n-e, n-start), reversed
                    position_sink(b, n - e, n - start, rows.flip(0), True)
                else:
                    position_sink(b, start, e, rows, False)

        stream_hidden(model, ids, layer, piece, sink)
        if pooler is not None:
            pooled.append(pooler.result())
    if pool == "none":
        return None
    out = pooled[0] if len(pooled) == 1 else (pooled[0] + pooled[1]) / 2  # (B, d)
    return out.numpy()


def embed_sequences(model, seqs: Sequence[np.ndarray], *, pool: str = "mean",
                    layer: int | None = None, rc_average: bool = False, piece: int = 1 << 15,
                    batch_tokens: int = 1 << 16, max_batch: int = 64) -> np.ndarray:
    """Pooled embeddings (n, d) float32 for a list of token arrays (the Python API).

    Consecutive sequences of equal length share a batch (up to `batch_tokens` tokens).
    """
    if pool not in POOLS or pool == "none":
        raise ConfigError(f"pool {pool!r} is not one of mean, max, last")
    out = []
    for rows in make_batches([len(s) for s in seqs], batch_tokens, max_batch):
        out.append(embed_batch(model, [seqs[r] for r in rows], pool=pool, layer=layer,
                               rc_average=rc_average, piece=piece))
    d = int(model.config.d_model)
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)


def per_position(model, seq: np.ndarray, *, layer: int | None = None, rc_average: bool = False,
                 piece: int = 1 << 15) -> np.ndarray:
    """Per-position embeddings (L, d) float32 of one token array (held in memory: for
    megabase items use `run_embed`, which writes them piece by piece)."""
    d = int(model.config.d_model)
    H = np.zeros((len(seq), d), np.float32)

    def sink(b, s, e, h, is_rc):
        if is_rc:
            H[s:e] = (H[s:e] + h.numpy()) / 2
        else:
            H[s:e] = h.numpy()

    embed_batch(model, [seq], pool="none", layer=layer, rc_average=rc_average, piece=piece,
                position_sink=sink)
    return H


def make_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int) -> list[list[int]]:
    """Consecutive items of equal length grouped up to batch_tokens tokens (deterministic)."""
    batches: list[list[int]] = []
    cur: list[int] = []
    for i, n in enumerate(lengths):
        cap = max(1, min(max_batch, batch_tokens // max(int(n), 1)))
        if cur and (lengths[cur[0]] != n or len(cur) >= cap):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


# --------------------------------------------------------------------------- items


def read_bed(path: Path, genome) -> hdf5.Items:
    """BED3+ (chrom start end [name [score [strand]]]), 0-based half-open, '#'/track skipped."""
    chrom, start, end, strand, ids = [], [], [], [], []
    if not path.exists():
        raise InputError(f"{path}: BED file not found")
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(("#", "track", "browser")):
                continue
            f = line.rstrip("\n").split("\t")
            if len(f) < 3:
                f = line.split()
            if len(f) < 3:
                raise InputError(f"{path}:{lineno}: expected chrom, start, end (tab-separated), "
                                 f"got {line.strip()!r}")
            try:
                s, e = int(f[1]), int(f[2])
            except ValueError:
                raise InputError(f"{path}:{lineno}: start/end {f[1]!r} {f[2]!r} are not "
                                 "integers") from None
            name = genome.resolve(f[0])
            n = genome.lengths[name]
            if not (0 <= s < e <= n):
                raise InputError(f"{path}:{lineno}: region {f[0]}:{s}-{e} is not within "
                                 f"0..{n} (BED is 0-based half-open, start < end)")
            st = f[5] if len(f) > 5 and f[5] in "+-" and f[5] else "+"
            chrom.append(name)
            start.append(s)
            end.append(e)
            strand.append(st)
            ids.append(f[3] if len(f) > 3 and f[3] not in ("", ".") else f"{name}:{s}-{e}({st})")
    if not chrom:
        raise InputError(f"{path}: no regions")
    return hdf5.Items(np.array(chrom, object), np.array(start, np.int64), np.array(end, np.int64),
                      np.array(strand, object), np.array(ids, object))


def window_items(genome, window: int, stride: int) -> hdf5.Items:
    """Windows [s, s+window) at s = 0, stride, ... over every record; the last one of a record
    ends at the record's end (it may be shorter). window 0: one item per whole record."""
    chrom, start, end = [], [], []
    for name in genome.names:
        n = genome.lengths[name]
        if window <= 0:
            chrom.append(name), start.append(0), end.append(n)
            continue
        s = 0
        while True:
            e = min(s + window, n)
            chrom.append(name), start.append(s), end.append(e)
            if e >= n:
                break
            s += stride
    m = len(chrom)
    ids = [f"{c}:{s}-{e}(+)" for c, s, e in zip(chrom, start, end, strict=True)]
    return hdf5.Items(np.array(chrom, object), np.array(start, np.int64), np.array(end, np.int64),
                      np.array(["+"] * m, object), np.array(ids, object))


def item_tokens(genome, chrom: str, start: int, end: int, strand: str) -> np.ndarray:
    ids, _ = genome.tokens(chrom, start, end)  # (L,) uint8
    return reverse_complement(ids) if strand == "-" else ids


# --------------------------------------------------------------------------- the writer


class _Writer:
    """One thread that runs every write job of a run, in the order they were put.

    `put(job, nbytes)` blocks while more than `max_bytes` of arrays are queued (memory stays
    bounded however slow the disk or the codec). The first exception raised by a job is kept,
    later jobs are dropped (so no `done` flag follows a failed write), and the exception is
    raised in the caller's thread at its next `put` or at `close`.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.error: BaseException | None = None
        self.busy_s = 0.0  # time spent inside jobs (what the thread took off the main loop)
        self._jobs: deque = deque()
        self._queued = 0  # bytes held by queued jobs
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="mamba-dna-embed-writer",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    self._cv.wait()
                job, nbytes = self._jobs.popleft()
            if job is None:
                return
            if self.error is None:
                t = time.perf_counter()
                try:
                    job()
                except BaseException as e:  # handed to the main thread, never swallowed
                    self.error = e
                self.busy_s += time.perf_counter() - t
            with self._cv:
                self._queued -= nbytes
                self._cv.notify_all()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, job: Callable[[], None], nbytes: int = 0) -> None:
        with self._cv:
            while self._queued and self._queued + nbytes > self.max_bytes and self.error is None:
                self._cv.wait()
            self._raise()
            self._jobs.append((job, nbytes))
            self._queued += nbytes
            self._cv.notify_all()

    def close(self) -> None:
        """Run what is queued, stop the thread, raise the first error of a job."""
        if self._thread.is_alive():
            with self._cv:
                self._jobs.append((None, 0))
                self._cv.notify_all()
            self._thread.join()
        self._raise()


def _write_rows(ds, s: int, e: int, rows: np.ndarray, is_rc: bool) -> None:
    """Rows [s, e) of one item's per-position dataset; reverse-strand rows are averaged with
    the forward rows already written there."""
    if is_rc:
        rows = (ds[s:e].astype(np.float32) + rows) / 2  # (e-s, d)
    ds[s:e] = rows if rows.dtype == ds.dtype else rows.astype(ds.dtype)


# --------------------------------------------------------------------------- the job


@dataclass
class EmbedConfig:
    fasta: str
    model: str
    out: str
    bed: str | None = None
    window: int = 0  # 0 = whole records (or BED regions)
    stride: int | None = None  # default: window (no overlap)
    pool: str = "mean"
    per_position: bool = False
    layer: int | None = None  # None = after the final norm
    rc_average: bool = False
    dtype: str = "float32"
    compression: str = hdf5.DEFAULT_COMPRESSION  # per-position filter: lzf | gzip | none
    piece: int = 1 << 15  # positions per streamed piece
    batch_tokens: int = 1 << 16
    max_batch: int = 64
    shard: str | None = None  # "i/n", 0 <= i < n
    resume: bool = False
    device: str = "auto"

    def check(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"--pool {self.pool!r}: expected one of {', '.join(POOLS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: expected float32 or float16")
        if self.pool == "none" and not self.per_position:
            raise ConfigError("--pool none without --per-position would write nothing",
                              hint="add --per-position or choose --pool mean|max|last")
        if self.bed and self.window:
            raise ConfigError("--bed and --window are exclusive (regions or windows)")
        if self.window < 0 or (self.stride is not None and self.stride <= 0):
            raise ConfigError(f"--window {self.window} / --stride {self.stride}: expected "
                              "positive lengths in bp")
        if self.piece < 1:
            raise ConfigError(f"piece {self.piece} must be >= 1")
        hdf5.check_compression(self.compression)
        parse_shard(self.shard)


def shard_path(out: Path, shard: str | None) -> Path:
    i, n = parse_shard(shard)
    if n == 1:
        return out
    return out.with_name(f"{out.stem}.shard{i}-of-{n}{out.suffix or '.h5'}")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model(model_dir: str | os.PathLike, device: str = "auto"):
    """MambaLM from a model directory, in eval mode, plus the checkpoint's sha256."""
    from mamba_dna.model import MambaLM

    p = Path(model_dir)
    weights = p / "model.safetensors"
    if not weights.exists():
        raise InputError(f"{p}: not a model directory (no model.safetensors)",
                         hint="point --model at a directory written by `mamba-dna pretrain`")
    model = MambaLM.from_pretrained(p, map_location=_device(device))
    model.eval()
    return model, sha256_file(weights)


def run_embed(cfg: EmbedConfig, model=None, checkpoint_sha: str | None = None) -> Path:
    """Write the embedding file for `cfg` and return its path (a shard file with --shard)."""
    from mamba_dna.genome import Genome

    cfg.check()
    stride = cfg.stride or cfg.window
    shard_i, shard_n = parse_shard(cfg.shard)
    out = shard_path(Path(cfg.out), cfg.shard)
    part = partial_path(out)
    if model is None:
        model, checkpoint_sha = load_model(cfg.model, cfg.device)
    layer = cfg.layer
    d = int(model.config.d_model)

    # ---- setup: items and batches (identical in every shard)
    genome = Genome(cfg.fasta)
    items = read_bed(Path(cfg.bed), genome) if cfg.bed else window_items(genome, cfg.window, stride)
    batches = make_batches(items.length.tolist(), cfg.batch_tokens, cfg.max_batch)
    mine = [b for j, b in enumerate(batches) if j % shard_n == shard_i]
    rows_mine = np.array([i for b in mine for i in b], dtype=np.int64)
    file_items = items.take(rows_mine)
    row_of = {int(g): r for r, g in enumerate(rows_mine)}  # global index -> row in this file

    cfg_json = json.dumps(model.config.to_dict(), sort_keys=True)
    attrs = {
        "model_config": cfg_json,
        "model_dir": str(cfg.model),
        "checkpoint_sha256": checkpoint_sha or "",
        "reference": Path(cfg.fasta).name,
        "reference_sha256": sha256_file(cfg.fasta),
        "window": int(cfg.window),
        "stride": int(stride or 0),
        "regions": Path(cfg.bed).name if cfg.bed else "",
        "pooling": cfg.pool,
        "layer": "final_norm" if layer is None else int(layer),
        "rc_average": int(cfg.rc_average),
        "dtype": cfg.dtype,
        "compression": cfg.compression,
        "per_position": int(cfg.per_position),
        "d_model": d,
        "n_items_total": len(items),
        "shard": f"{shard_i}/{shard_n}" if shard_n > 1 else "",
        "format_version": hdf5.FORMAT_VERSION,
        "embed_config": json.dumps(asdict(cfg), sort_keys=True),
    }

    import h5py

    if cfg.resume and part.exists():
        f = hdf5.open_for_resume(part, {k: attrs.get(k) for k in hdf5.RUN_KEYS})
        if not np.array_equal(f["items/index"][:], file_items.index):
            f.close()
            raise InputError(f"{part}: its item list differs from this run's (FASTA/BED changed?)",
                             hint="delete it to start over")
        log.info(f"resuming {part}: {int(f['items/done'][:].sum())}/{len(file_items)} items done")
    else:
        if cfg.resume and out.exists():
            log.info(f"{out} is already complete; nothing to resume")
            return out
        hdf5.create(part, file_items, attrs, d_model=d, pooled=cfg.pool != "none",
                    per_position=cfg.per_position, dtype=cfg.dtype)
        f = h5py.File(part, "r+")

    # ---- run: batch by batch; the writer thread writes the rows, then the batch's pooled
    # rows and `done` flags, then flushes, in that order
    done = f["items/done"][:].astype(bool)  # (n_file,)
    # float16 rows are cast on the device; --rc-average averages in float32 first
    pos_dtype = torch.float16 if cfg.dtype == "float16" and not cfg.rc_average else torch.float32
    chunk_rows = min(hdf5.CHUNK_ROWS, cfg.piece)  # whole chunks per streamed piece
    # two pieces of the largest batch in flight at most (a piece is at most
    # max(batch_tokens, piece) positions x d x 4 bytes)
    writer = _Writer(max_bytes=2 * max(cfg.batch_tokens, cfg.piece) * d * 4)
    dsets: dict[int, object] = {}  # item row in this file -> its per-position dataset

    def create(rows, lengths, names):
        dsets.clear()
        for r, n, name in zip(rows, lengths, names, strict=True):
            dsets[r] = hdf5.per_position_dataset(
                f, int(file_items.index[r]), n, d, cfg.dtype, name, chunk_rows=chunk_rows,
                compression=cfg.compression)

    def finish(rows, pooled):
        if pooled is not None:
            f["pooled"][rows[0] : rows[-1] + 1] = pooled.astype(cfg.dtype)
        f["items/done"][rows[0] : rows[-1] + 1] = 1
        f.flush()

    try:
        total_bp = int(file_items.length.sum())
        left = [b for b in mine if not all(done[row_of[i]] for i in b)]
        bp_done = total_bp - sum(int(items.length[i]) for b in left for i in b)
        with log.progress(f"embedding {Path(cfg.fasta).name}", total=total_bp, unit="bp") as bar:
            bar.advance(bp_done)
            for batch in left:
                seqs = [item_tokens(genome, items.chrom[i], int(items.start[i]),
                                    int(items.end[i]), items.strand[i]) for i in batch]
                rows = [row_of[i] for i in batch]
                sink = None
                if cfg.per_position:
                    writer.put(lambda r=rows, b=batch, s=seqs: create(
                        r, [len(x) for x in s], [str(items.id[i]) for i in b]))

                    def sink(b, s, e, h, is_rc, rows=rows):
                        a = h.numpy()  # (e-s, d) view of the piece: no copy
                        writer.put(lambda: _write_rows(dsets[rows[b]], s, e, a, is_rc), a.nbytes)

                pooled = embed_batch(model, seqs, pool=cfg.pool, layer=layer,
                                     rc_average=cfg.rc_average, piece=cfg.piece,
                                     position_sink=sink, position_dtype=pos_dtype)
                writer.put(lambda r=rows, p=pooled: finish(r, p))
                bar.advance(sum(len(s) for s in seqs))

        def complete():
            f.attrs["complete"] = 1
            f.flush()

        writer.put(complete)
        writer.close()  # raises the writer's error, if any
    finally:
        try:
            writer.close()  # after an error in this thread: what is queued still lands
        except BaseException:
            if writer.error is None:  # not the writer's error (already raised): a Ctrl-C
                raise
        finally:
            f.close()
    os.replace(part, out)
    return out


# --------------------------------------------------------------------------- merge


def merge(shards: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Join shard files into one file identical to a single-process run."""
    import h5py

    from mamba_dna.fsutil import atomic_path

    if not shards:
        raise ConfigError("embed merge: no shard files given")
    infos = []
    for p in shards:
        p = Path(p)
        if not p.exists():
            hint = " (still running? it is the .partial file)" if partial_path(p).exists() else ""
            raise InputError(f"{p}: shard file not found{hint}")
        with h5py.File(p, "r") as f:
            hdf5.check_format(f, str(p))
            if not int(f.attrs.get("complete", 0)):
                raise InputError(f"{p}: shard is incomplete", hint="run it again with --resume")
            infos.append((p, hdf5.run_attrs(f), f["items/index"][:]))
    ref = infos[0][1]
    for p, a, _ in infos[1:]:
        diff = hdf5.diff_attrs(ref, a)
        if diff:
            raise InputError(f"{p}: written with different settings from {infos[0][0]} "
                             f"({', '.join(diff)})")
    n = int(ref["n_items_total"])
    owner = np.full(n, -1, dtype=np.int64)
    for k, (p, _, idx) in enumerate(infos):
        clash = idx[owner[idx] >= 0]
        if len(clash):
            raise InputError(f"{p}: item {int(clash[0])} is also in {infos[owner[clash[0]]][0]} "
                             "(the same shard given twice?)")
        owner[idx] = k
    if (owner < 0).any():
        raise InputError(f"items missing from the shards given: {int((owner < 0).sum())} of {n}, "
                         f"first index {int(np.argmax(owner < 0))}", hint="pass every shard file")

    out = Path(out)
    with atomic_path(out, suffix=".h5") as tmp:
        srcs = [h5py.File(p, "r") for p, _, _ in infos]
        try:
            parts = [hdf5.read_items(s) for s in srcs]
            order = np.concatenate([pt.index for pt in parts])  # global index per concatenated row
            cat = hdf5.Items(*(np.concatenate([getattr(pt, c) for pt in parts])
                               for c in ("chrom", "start", "end", "strand", "id", "index")))
            perm = np.argsort(order, kind="stable")
            items = cat.take(perm)
            attrs = {k: v for k, v in srcs[0].attrs.items()
                     if k not in ("format", "format_version", "mamba_dna_version", "coordinates",
                                  "d_model", "dtype", "per_position", "complete")}
            attrs["shard"] = ""
            attrs["merged_from"] = json.dumps([p.name for p, _, _ in infos])
            attrs["compression"] = ref["compression"]  # "gzip" for files from before the option
            d, dtype = int(ref["d_model"]), str(ref["dtype"])
            has_pooled = "pooled" in srcs[0]
            hdf5.create(tmp, items, attrs, d_model=d, pooled=has_pooled,
                        per_position=bool(ref["per_position"]), dtype=dtype)
            with h5py.File(tmp, "r+") as f:
                if has_pooled:
                    pooled = np.concatenate([s["pooled"][:] for s in srcs])[perm]  # (n, d)
                    f["pooled"][:] = pooled
                if ref["per_position"]:
                    for s in srcs:
                        for key in s["per_position"]:
                            s.copy(s["per_position"][key], f["per_position"], name=key)
                f["items/done"][:] = 1
                f.attrs["complete"] = 1
        finally:
            for s in srcs:
                s.close()
    return out
