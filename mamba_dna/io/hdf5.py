"""The embedding file: one HDF5 file per `mamba-dna embed` run, readable with plain h5py.

Schema (format "mamba-dna-embeddings", format_version 1)::

    /                      root attributes (all scalars or strings):
        format             "mamba-dna-embeddings"
        format_version     1
        mamba_dna_version  version that wrote the file
        model_config       the model's config.json, as a JSON string
        model_dir          model directory as given on the command line
        checkpoint_sha256  sha256 of model.safetensors
        reference          FASTA file name (basename)
        reference_sha256   sha256 of the FASTA file as given (compressed bytes if .gz)
        window, stride     window length / stride in bp (0 = whole records or BED regions)
        regions            BED file name, "" when windows were used
        pooling            "mean" | "max" | "last" | "none" ("last": causal models only)
        layer              "final_norm" = after the final norm (the default), or k: the
                           residual stream after k blocks (MambaLM.hidden's `layer`)
        rc_average         1 if the output is strand-symmetric (see rc_average_method)
        rc_average_method  "rc_pass": the mean with the flipped pass over the reverse
                           complement (causal models, Caduceus-Ph); "rcps_halves":
                           Caduceus-PS, the mean of the forward half and the channel-flipped
                           RC half of one pass; "" without rc_average
        architecture       "mamba" (causal), "caduceus-ph" (bidirectional; = pretrain's
                           bimamba) or "caduceus-ps" (RC-equivariant parameter sharing)
        objective          "clm" (causal models) or "mlm" (bidirectional: masked LM)
        channels           what the d columns are: "d_model", or for a Caduceus-PS without
                           rc_average "2 x d_model: [forward half | RC half] ..."
        dtype              "float32" | "float16" (pooled and per-position datasets)
        compression        filter of the per-position datasets: "none" (the default),
                           "lzf" (shuffle + LZF) or "gzip" (shuffle + gzip level 1); files
                           written before this attribute existed used "gzip"
        per_position       1 if /per_position holds one dataset per item
        d_model            embedding width d: the columns of /pooled and /per_position
                           (the model's d_model, or 2 x d_model for PS halves: `channels`)
        coordinates        "0-based half-open; strand '+' or '-'"
        n_items_total      number of items in the full (unsharded) run
        shard              "i/n" for a shard file, "" for a full or merged file
        complete           1 once every item of this file is written (0 while running)

    /items/                the table of items, one row per item, as column datasets:
        index    int64 (n,)   position of the item in the full run (0..n_items_total-1)
        id       str (n,)     "chrom:start-end(strand)" or the BED name column
        chrom    str (n,)     record name in the FASTA
        start    int64 (n,)   0-based start
        end      int64 (n,)   end (exclusive); length = end - start
        strand   str (n,)     "+" or "-" ("-" = the reverse complement was embedded)
        done     uint8 (n,)   1 once the item's rows are written (what --resume reads)
    /pooled                float (n, d): pooled embedding of item r in row r (absent for
                           pooling "none")
    /per_position/<index>  float (length, d) for the item with that `index`, named by the
                           index zero-padded to 9 digits; chunked along length (at most
                           4,096 rows, never more than the streamed piece), compressed as the
                           root attribute `compression` says; attribute `id`.

Compression. Embeddings are float noise to a compressor: shuffle+gzip-1 saves about 14% of
the bytes and shuffle+LZF about 7%, for CPU time of the order of the forward pass itself
(bench/embed.py measures it). So the default is "none": the fastest, and every HDF5 reader
opens it. "gzip" (any reader) or "lzf" (h5py
everywhere; R rhdf5, MATLAB, HDFView and h5dump need the LZF plugin) trade CPU for a few
percent of disk. `--dtype float16` halves the bytes whatever the filter.

Rows of /items, /pooled and the per-position names all use the same order. Items are
fixed when the file is created; rows are filled in as items finish, and `done` marks
them, so a file cut off by a crash or a time limit can be continued (`--resume`).

Reading with h5py alone::

    with h5py.File("emb.h5") as f:
        X = f["pooled"][:]                                   # (n, d)
        chrom = f["items/chrom"].asstr()[:]
        x0 = f["per_position/000000000"][:1000]               # first 1 kb of item 0
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mamba_dna.errors import ConfigError, InputError

FORMAT = "mamba-dna-embeddings"
FORMAT_VERSION = 1
COORDINATES = "0-based half-open; strand '+' or '-'"
# attributes that must agree between a partial file and a --resume run, and between shards
RUN_KEYS = (
    "format_version", "model_config", "checkpoint_sha256", "reference", "reference_sha256",
    "window", "stride", "regions", "pooling", "layer", "rc_average", "dtype",
    "per_position", "d_model", "n_items_total", "compression",
)
# per-position filters by name -> h5py create_dataset keywords (shuffle groups the bytes of
# each float by significance, which is what lets either codec find repeats at all)
COMPRESSIONS = {
    "lzf": {"compression": "lzf", "shuffle": True},
    "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
    "none": {},
}
DEFAULT_COMPRESSION = "none"
LEGACY_COMPRESSION = "gzip"  # what a file without the attribute used
CHUNK_ROWS = 4096
# File format bounds. A low bound of v110 or later writes superblock v3, whose "file is open
# for write" flag stays set when the writer is killed (SIGKILL, OOM) and then refuses every
# later open ("may use h5clear"); v108 (superblock v2) has no such flag, so a partial file
# stays resumable after any death. Readable by HDF5 >= 1.8.
LIBVER = ("v108", "v108")
# chunks held in each per-position dataset's cache: a chunk that one piece fills only in part
# (the item's last rows, or reverse-strand rows in --rc-average) stays in memory until the
# next write completes it, instead of being compressed, read back and compressed again
# (HDF5's default cache, 1 MiB, is smaller than one 4096 x 128 float32 chunk)
CACHE_CHUNKS = 4


def position_key(index: int) -> str:
    """Dataset name under /per_position for the item with global index `index`."""
    return f"{int(index):09d}"


@dataclass
class Items:
    """The item table (columns as numpy arrays, one row per item)."""

    chrom: np.ndarray  # (n,) object (str)
    start: np.ndarray  # (n,) int64
    end: np.ndarray  # (n,) int64
    strand: np.ndarray  # (n,) object ("+" / "-")
    id: np.ndarray  # (n,) object (str)
    index: np.ndarray = field(default=None)  # (n,) int64 global index

    def __post_init__(self):
        n = len(self.chrom)
        if self.index is None:
            self.index = np.arange(n, dtype=np.int64)
        for name in ("start", "end", "strand", "id", "index"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"item column {name} has {len(getattr(self, name))} rows, not {n}")

    def __len__(self) -> int:
        return len(self.chrom)

    @property
    def length(self) -> np.ndarray:
        return self.end - self.start

    def take(self, rows) -> Items:
        rows = np.asarray(rows, dtype=np.int64)
        return Items(self.chrom[rows], self.start[rows], self.end[rows], self.strand[rows],
                     self.id[rows], self.index[rows])


def _str_dtype():
    import h5py

    return h5py.string_dtype("utf-8")


def create(path: str | os.PathLike, items: Items, attrs: dict, *, d_model: int,
           pooled: bool, per_position: bool, dtype: str) -> None:
    """Create a new (incomplete) embedding file holding the item table and empty datasets."""
    import h5py

    from mamba_dna import __version__

    n = len(items)
    with h5py.File(path, "w", libver=LIBVER, locking=False) as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["mamba_dna_version"] = __version__
        f.attrs["coordinates"] = COORDINATES
        f.attrs["d_model"] = int(d_model)
        f.attrs["dtype"] = dtype
        f.attrs["per_position"] = int(per_position)
        f.attrs["complete"] = 0
        f.attrs["compression"] = DEFAULT_COMPRESSION  # `attrs` names the one used
        for k, v in attrs.items():
            f.attrs[k] = v
        g = f.create_group("items")
        g.create_dataset("index", data=items.index.astype(np.int64))
        g.create_dataset("id", data=list(items.id), dtype=_str_dtype())
        g.create_dataset("chrom", data=list(items.chrom), dtype=_str_dtype())
        g.create_dataset("start", data=items.start.astype(np.int64))
        g.create_dataset("end", data=items.end.astype(np.int64))
        g.create_dataset("strand", data=list(items.strand), dtype=_str_dtype())
        g.create_dataset("done", data=np.zeros(n, dtype=np.uint8))
        if pooled:
            f.create_dataset("pooled", shape=(n, d_model), dtype=dtype,
                             chunks=(max(1, min(n, 4096)), d_model) if n else None)
        if per_position:
            f.create_group("per_position")


def expected_bytes(items: Items, d_model: int, dtype: str, *, pooled: bool,
                   per_position: bool) -> int:
    """About how many bytes an embedding file of these items takes (uncompressed): what
    `fsutil.check_free_space` compares with the free space before the run starts."""
    size = np.dtype(dtype).itemsize
    n = len(items)
    total = 64 * n + (1 << 16)  # item table and HDF5 metadata
    if pooled:
        total += n * d_model * size
    if per_position:
        total += int(items.length.sum()) * d_model * size + 4096 * n
    return int(total)


def read_items(f) -> Items:
    """The item table of an open h5py.File."""
    g = f["items"]
    return Items(
        chrom=np.asarray(g["chrom"].asstr()[:], dtype=object),
        start=g["start"][:].astype(np.int64),
        end=g["end"][:].astype(np.int64),
        strand=np.asarray(g["strand"].asstr()[:], dtype=object),
        id=np.asarray(g["id"].asstr()[:], dtype=object),
        index=g["index"][:].astype(np.int64),
    )


def run_attrs(f) -> dict:
    """The attributes that identify a run (what resume and merge compare)."""
    out = {}
    for k in RUN_KEYS:
        v = f.attrs.get(k)
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bytes):
            v = v.decode()
        if k == "compression" and v is None:
            v = LEGACY_COMPRESSION
        out[k] = v
    return out


def check_format(f, where: str) -> None:
    if f.attrs.get("format") != FORMAT:
        raise InputError(f"{where}: not a mamba-dna embedding file (attribute format="
                         f"{f.attrs.get('format')!r}, expected {FORMAT!r})")
    if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
        raise InputError(f"{where}: embedding format_version {f.attrs.get('format_version')} "
                         f"is not {FORMAT_VERSION}, which this version reads")


def diff_attrs(a: dict, b: dict) -> list[str]:
    """Names of run attributes that differ between two runs."""
    return [k for k in RUN_KEYS if a.get(k) != b.get(k)]


def check_compression(name: str) -> dict:
    """h5py keywords for a compression name, or ConfigError naming the choices."""
    if name not in COMPRESSIONS:
        raise ConfigError(f"--compression {name!r}: expected one of {', '.join(COMPRESSIONS)}")
    return COMPRESSIONS[name]


def per_position_dataset(f, index: int, length: int, d: int, dtype: str, item_id: str,
                         chunk_rows: int = CHUNK_ROWS, compression: str = DEFAULT_COMPRESSION):
    """(Re)create the (length, d) dataset for one item, chunked along length.

    Pass chunk_rows <= the streamed piece so that each piece fills whole chunks.
    """
    grp = f["per_position"]
    key = position_key(index)
    if key in grp:  # left over from an item a crash cut off: write it again
        del grp[key]
    rows = max(1, min(int(length), chunk_rows))
    chunk_bytes = rows * d * np.dtype(dtype).itemsize
    ds = grp.create_dataset(key, shape=(int(length), d), dtype=dtype, chunks=(rows, d),
                            rdcc_nbytes=CACHE_CHUNKS * chunk_bytes + 4096, rdcc_w0=1.0,
                            **check_compression(compression))
    ds.attrs["id"] = item_id
    return ds


def open_for_write(path: str | os.PathLike):
    """Open a (partial) embedding file read-write.

    HDF5's own file lock is off: the caller holds `fsutil.output_lock` on the output, which
    also works where HDF5 locking fails (some network file systems) and dies with its
    process. Writers flush after each batch and set `done` only after an item's rows, so
    whatever a crash leaves is a valid file whose `done` rows are complete.
    """
    import h5py

    from mamba_dna.fsutil import os_errors

    with os_errors(path, "open"):
        return h5py.File(path, "r+", locking=False)


def open_for_resume(path: Path, expect: dict):
    """Open a partial file for appending after checking it belongs to the same run."""
    import h5py

    try:
        f = h5py.File(path, "r+", locking=False)
    except OSError as e:
        if "already open for write" in str(e):  # superblock v3 of an older version, killed
            raise InputError(
                f"{path}: the partial file was written by an older mamba-dna whose HDF5 format "
                "cannot be reopened after the writer was killed",
                hint="delete it and run again; files written now resume after any death") from e
        raise InputError(
            f"{path}: the partial embedding file cannot be opened ({e}); it was probably cut "
            "off in the middle of a write", hint="delete it and run again without --resume"
        ) from e
    try:
        check_format(f, str(path))
        diff = diff_attrs(run_attrs(f), expect)
        if diff:
            raise InputError(
                f"{path}: the partial file was written with different settings "
                f"({', '.join(diff)}); --resume only continues the same run",
                hint="use the same options, or delete it to start over",
            )
    except BaseException:
        f.close()
        raise
    return f


def summary(path: str | os.PathLike) -> dict:
    """Attributes and sizes of an embedding file (for `mamba-dna embed` output and tests)."""
    import h5py

    with h5py.File(path, "r") as f:
        check_format(f, str(path))
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
        attrs["n_items"] = int(f["items/index"].shape[0])
        attrs["n_done"] = int(f["items/done"][:].sum())
        attrs["model_config"] = json.loads(attrs["model_config"])
    return attrs
