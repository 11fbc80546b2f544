"""The shard directory that `mamba-dna tokenize` writes, and a resumable sampler over it.

Layout of a shard directory (all splits share one window length):

    manifest.json             sources (path, size, sha256, records), tokenizer, window spec,
                              split options, per-split counts, invalid bytes mapped to N
    {split}.tokens.npy        uint8 (n_windows, length): token ids (mamba_dna.tokenizer)
    {split}.softmask.npy      uint8 (n_windows, ceil(length / 8)): soft-mask bits,
                              np.packbits(..., axis=-1, bitorder="little")
    {split}.index.tsv         source, record, start, end, strand per window (0-based,
                              half-open; end - start < length where the window was N-padded)

Every .npy opens with np.load(mmap_mode="r"): nothing is read until a window is used. The
directory is written under a temporary name and renamed when complete, so an interrupted
run never leaves something that looks like a finished shard directory.

`ResumableSampler` yields batches of window indices; `state_dict()` / `load_state_dict()`
let a job restarted mid-epoch continue with exactly the same sequence of batches, and
`rank` / `world_size` give each distributed rank a distinct, deterministic share. The state
counts batches handed out: save it together with the step that consumed the last of them
(a torch DataLoader with prefetching draws batches ahead of training; read batches with
`ShardDataset.batch(indices)` in the training loop instead, it is a memory-map slice).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mamba_dna import __version__, log
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import (
    atomic_dir,
    guard_output,
    os_errors,
    output_lock,
    sha256_file,
    write_json,
)
from mamba_dna.genome import SPLITS, Genome, GenomeWindows, WindowSpec, read_bed
from mamba_dna.tokenizer import TokenizerSpec

__all__ = ["FORMAT", "ResumableSampler", "ShardDataset", "write_shards"]

FORMAT = "mamba-dna-shards"
FORMAT_VERSION = 1
INDEX_DTYPE = np.dtype(
    [("source", np.int32), ("record", object), ("start", np.int64), ("end", np.int64), ("strand", "U1")]
)


class _NpyRowWriter:
    """Append rows to a 2-D uint8 .npy whose final row count is known only at the end.

    The header is written for an upper bound and rewritten with the true count on close;
    .npy headers are padded to 64 bytes, so both have the same size.
    """

    def __init__(self, path: Path, width: int, max_rows: int):
        self.path, self.width, self.rows = path, width, 0
        self.fh = open(path, "wb")
        self._header(max(max_rows, 1))
        self.data_at = self.fh.tell()

    def _header(self, rows: int) -> None:
        np.lib.format.write_array_header_1_0(
            self.fh, {"descr": "|u1", "fortran_order": False, "shape": (rows, self.width)}
        )

    def append(self, rows: np.ndarray) -> None:
        """Append a block of rows: uint8 (k, width)."""
        assert rows.dtype == np.uint8 and rows.ndim == 2 and rows.shape[1] == self.width
        self.fh.write(np.ascontiguousarray(rows).data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        self.fh.seek(0)
        self._header(self.rows)
        if self.fh.tell() != self.data_at:  # cannot happen for 2-D uint8; guard anyway
            raise RuntimeError(f"{self.path}: .npy header size changed")
        self.fh.close()


def _source_entry(path: Path, genome: Genome) -> dict:
    st = path.stat()
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "sha256": sha256_file(path),
        "records": len(genome.names),
        "bases": genome.total_length,
    }


def write_shards(
    fastas: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    spec: WindowSpec,
    *,
    regions=None,
    invalid: str = "error",
    splits: Sequence[str] = SPLITS,
    overwrite: bool = False,
) -> dict:
    """Tokenize FASTA files into a shard directory; returns the manifest.

    `spec.split` is ignored: every split in `splits` is written. `regions` (BED path, record
    names or (chrom, start, end)) applies to every file; names absent from a file are an error.
    """
    out_dir = Path(out_dir)
    if not fastas:
        raise ConfigError("no FASTA files given; expected at least one")
    guard_output(out_dir, [*fastas, regions if isinstance(regions, (str, os.PathLike)) else None],
                 directory=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is a file; expected a shard directory")
    with output_lock(out_dir), os_errors(out_dir):
        return _write_shards(fastas, out_dir, spec, regions=regions, invalid=invalid,
                             splits=splits, overwrite=overwrite)


def _check_plans(fastas, spec: WindowSpec, plans, bounds: dict) -> None:
    """Refuse plans that would write padding instead of sequence, or an empty train split."""
    longest = max((seg.end - seg.start for plan in plans for seg, _, _ in plan), default=0)
    if spec.pad == "N" and longest < (1 - spec.max_n_fraction) * spec.length:
        # every window would be mostly N padding, which --max-n-fraction exists to drop
        raise ConfigError(
            f"--window {spec.length:,}: the longest record or region in {', '.join(map(str, fastas))} "
            f"is {longest:,} bp, so every window would be more than {spec.max_n_fraction:g} "
            "N padding (--max-n-fraction)",
            hint=f"use --window <= {longest:,} or raise --max-n-fraction")
    if bounds["train"] == 0 and spec.val_fraction + spec.test_fraction < 1:
        n_rec = sum(len({seg.chrom for seg, _, _ in plan}) for plan in plans)
        held = ", ".join(f"{k} {v:,}" for k, v in bounds.items())
        why = (f"--split-by record holds out whole records and the {n_rec} record(s) all fell in "
               "val/test" if spec.split_by == "record" else "every block fell in val/test")
        raise ConfigError(
            f"{', '.join(map(str, fastas))}: no training windows ({held}): {why}",
            hint="use --split-by block to split positions within records, or add records")


def _write_shards(fastas, out_dir: Path, spec: WindowSpec, *, regions, invalid, splits,
                  overwrite) -> dict:
    if out_dir.exists() and not overwrite:
        raise ConfigError(f"{out_dir}: already exists", hint="pass --overwrite to replace it")
    if out_dir.exists() and not (out_dir / "manifest.json").exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir}: exists and is not a shard directory; refusing to replace it")
    spec = WindowSpec(**{**asdict(spec), "split": None}).check()
    L = spec.length
    t0 = time.time()
    genomes = [Genome(p, invalid=invalid) for p in fastas]
    per_file = [regions] * len(genomes)
    if regions is not None and len(genomes) > 1:  # each file takes the regions it has
        regs = read_bed(regions) if isinstance(regions, (str, os.PathLike)) else list(regions)
        per_file = [[r for r in regs if (r if isinstance(r, str) else r[0]) in g] for g in genomes]
        for r in regs:
            if not any(r in rs for rs in per_file):
                raise InputError(f"region {r}: its record is in none of the FASTA files given")
    # one GenomeWindows per file, aligned with `fastas` (None: no region falls in that file)
    window_sets = [
        GenomeWindows(g, **_window_kw(spec), regions=rs) if rs is None or len(rs) else None
        for g, rs in zip(genomes, per_file, strict=True)
    ]
    plans = [list(ws.plan()) if ws else [] for ws in window_sets]  # (segment, split, starts)
    # Upper bounds per split (before the N filter), for the .npy headers.
    bounds = dict.fromkeys(SPLITS, 0)
    for plan in plans:
        for _seg, split, starts in plan:
            bounds[split] += (2 if spec.strands == "both" else 1) * len(starts)
    _check_plans(fastas, spec, plans, bounds if "train" in splits else {**bounds, "train": 1})
    total_bases = sum(g.total_length for g in genomes)
    counts = dict.fromkeys(splits, 0)
    with atomic_dir(out_dir) as tmp:
        tok_w = {s: _NpyRowWriter(tmp / f"{s}.tokens.npy", L, bounds[s]) for s in splits}
        sm_w = {s: _NpyRowWriter(tmp / f"{s}.softmask.npy", (L + 7) // 8, bounds[s]) for s in splits}
        idx_fh = {s: open(tmp / f"{s}.index.tsv", "w", newline="") for s in splits}
        idx_w = {s: csv.writer(idx_fh[s], delimiter="\t", lineterminator="\n") for s in splits}
        for w in idx_w.values():
            w.writerow(["source", "record", "start", "end", "strand"])
        try:
            names = [Path(f).name for f in fastas]
            planned = sum(seg.end - seg.start for plan in plans for seg, _, _ in plan)
            with log.progress("tokenizing", total=round(planned / 1e6, 1), unit="Mb") as prog:
                for src, ws in enumerate(window_sets):
                    if ws is None:
                        continue
                    for seg, split, starts in plans[src]:
                        prog.advance(round((seg.end - seg.start) / 1e6, 3), note=f"{names[src]} {seg.chrom}")
                        if split not in counts:
                            continue
                        for tok, sm, st, en, strand in ws.window_blocks(seg, starts):
                            tok_w[split].append(tok)  # (k, L) uint8
                            sm_w[split].append(np.packbits(sm, axis=1, bitorder="little"))  # (k, L/8)
                            k = len(st)
                            idx_w[split].writerows(
                                zip([src] * k, [seg.chrom] * k, st.tolist(), en.tolist(), strand, strict=True)
                            )
                            counts[split] += len(st)
        finally:
            for w in (*tok_w.values(), *sm_w.values()):
                w.close()
            for fh in idx_fh.values():
                fh.close()
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mamba_dna_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "sources": [_source_entry(Path(p), g) for p, g in zip(fastas, genomes, strict=True)],
            "tokenizer": json.loads(TokenizerSpec().to_json()),
            "window": {k: v for k, v in asdict(spec).items() if k != "split"},
            "regions": _regions_json(regions),
            "invalid": invalid,
            "n_invalid_mapped_to_N": sum(g.n_invalid for g in genomes),
            "n_dropped_for_N": sum(ws.n_dropped_n for ws in window_sets if ws),
            "softmask_bitorder": "little",
            "counts": counts,
            "bases_in_sources": total_bases,
        }
        write_json(tmp / "manifest.json", manifest)
        umask = os.umask(0)
        os.umask(umask)
        for f in (tmp, *tmp.iterdir()):  # mkdtemp/mkstemp create 0700/0600
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
    dt = time.time() - t0
    if manifest["n_invalid_mapped_to_N"]:
        log.info(f"mapped {manifest['n_invalid_mapped_to_N']:,} invalid characters to N (--invalid N)")
    log.info(
        f"wrote {out_dir}: "
        + ", ".join(f"{s} {n:,}" for s, n in counts.items())
        + f" windows of {L:,} from {total_bases:,} bp in {dt:.1f}s"
    )
    return manifest


def _regions_json(regions):
    if regions is None or isinstance(regions, (str, os.PathLike)):
        return None if regions is None else str(regions)
    return [r if isinstance(r, str) else list(r) for r in regions]


def _window_kw(spec: WindowSpec) -> dict:
    d = asdict(spec)
    d.pop("split")
    return d


class ShardDataset:
    """One split of a shard directory: `len()`, `[i] -> (tokens uint8 (L,), softmask bool
    (L,))`, `.window_length`, `.index` (structured array: source, record, start, end, strand),
    `.manifest`. Memory-mapped: opening is instant and workers share the page cache."""

    def __init__(self, directory: str | os.PathLike, split: str = "train"):
        self.dir = Path(directory)
        if split not in SPLITS:
            raise ConfigError(f"split={split!r}: expected one of {SPLITS}")
        mpath = self.dir / "manifest.json"
        if not mpath.exists():
            partial = sorted(self.dir.parent.glob(f".{self.dir.name}.*.partial"))
            hint = " (an unfinished tokenize run left " + str(partial[0]) + ")" if partial else ""
            raise InputError(
                f"{self.dir}: not a complete shard directory (no manifest.json){hint}; "
                "expected the output of `mamba-dna tokenize`"
            )
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{mpath}: not valid JSON ({e})") from None
        if self.manifest.get("format") != FORMAT:
            raise InputError(f"{mpath}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        if self.manifest.get("format_version", 0) > FORMAT_VERSION:
            raise InputError(
                f"{mpath}: format version {self.manifest['format_version']} is newer than this "
                f"mamba-dna understands ({FORMAT_VERSION}); upgrade mamba-dna"
            )
        self.split = split
        self.window_length = int(self.manifest["window"]["length"])
        tok = self.dir / f"{split}.tokens.npy"
        if not tok.exists():
            raise InputError(
                f"{self.dir}: no {split!r} split (the manifest lists "
                f"{list(self.manifest.get('counts', {}))})"
            )
        self.tokens = np.load(tok, mmap_mode="r")  # (n, L) uint8
        self.softmask_bits = np.load(self.dir / f"{split}.softmask.npy", mmap_mode="r")  # (n, L/8)
        n = int(self.manifest["counts"][split])
        if self.tokens.shape != (n, self.window_length):
            raise InputError(
                f"{tok}: shape {self.tokens.shape}, manifest says ({n}, {self.window_length}); "
                "the shard directory is damaged: re-run `mamba-dna tokenize`"
            )
        self._index = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def index(self) -> np.ndarray:
        """Structured array (n,): source, record, start, end, strand (read on first use)."""
        if self._index is None:
            rows = []
            with open(self.dir / f"{self.split}.index.tsv", newline="") as fh:
                r = csv.reader(fh, delimiter="\t")
                next(r)
                for src, rec, s, e, strand in r:
                    rows.append((int(src), rec, int(s), int(e), strand))
            self._index = np.array(rows, dtype=INDEX_DTYPE)
        return self._index

    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        return np.unpackbits(bits, axis=-1, count=self.window_length, bitorder="little").astype(bool)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        return np.array(self.tokens[i]), self._unpack(self.softmask_bits[i])  # (L,), (L,)

    def batch(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens uint8 (B, L), softmask bool (B, L)) for a list of window indices."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")  # read the memory map in file order
        tok = np.empty((len(idx), self.window_length), np.uint8)  # (B, L)
        tok[order] = self.tokens[idx[order]]
        sm = self._unpack(np.asarray(self.softmask_bits[idx]))  # (B, L)
        return tok, sm

    def __repr__(self) -> str:
        return f"ShardDataset({str(self.dir)!r}, split={self.split!r}, {len(self)} x {self.window_length})"


class ResumableSampler:
    """Batches of indices into a dataset of `n` items; seedable, resumable, rank-aware.

    Epoch e uses the permutation of np.random.default_rng([seed, e]) (or 0..n-1 when not
    shuffling); rank r of `world_size` takes positions r, r + world_size, ... of it, after
    trimming to a multiple of world_size so every rank has the same number of batches (DDP
    needs that). `state_dict()` after k batches + `load_state_dict()` on a new sampler yields
    batches k+1, k+2, ... of the same epoch, then the next epochs, exactly as without the
    restart. Iterating runs to the end of the current epoch; iterate again for the next one.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        if n < 1:
            raise ConfigError(f"the dataset is empty (n={n}); nothing to sample")
        if batch_size < 1:
            raise ConfigError(f"batch_size {batch_size}: expected a positive integer")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} / world_size {world_size}: expected 0 <= rank < world_size")
        if n < world_size:
            raise ConfigError(f"{n} windows cannot be shared by {world_size} ranks")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.epoch = 0
        self.batch_in_epoch = 0  # batches already handed out in this epoch

    def per_rank(self) -> int:
        return self.n // self.world_size

    def __len__(self) -> int:
        m = self.per_rank()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's indices for `epoch`, in order; int64 (per_rank,)."""
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        else:
            perm = np.arange(self.n)
        perm = perm[: self.per_rank() * self.world_size]
        return perm[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        if self.batch_in_epoch >= len(self):  # the previous epoch was finished
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        idx = self.epoch_indices(self.epoch)
        bs = self.batch_size
        while self.batch_in_epoch < len(self):
            b = self.batch_in_epoch
            self.batch_in_epoch += 1  # counted before yield: a checkpoint after it resumes next
            yield idx[b * bs : (b + 1) * bs].tolist()

    def state_dict(self) -> dict:
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world_size": self.world_size,
            "rank": self.rank,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        for k in ("n", "batch_size", "seed", "world_size", "shuffle", "drop_last"):
            if k in state and state[k] != getattr(self, k):
                raise ConfigError(
                    f"sampler state has {k}={state[k]!r} but this run has {getattr(self, k)!r}; "
                    "resume with the same data, batch size, seed and world size"
                )
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
