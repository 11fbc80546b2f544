"""`embed merge`: shard files -> one file identical to a single-process run."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import atomic_path, guard_output, os_errors, output_lock, prepare_output
from mamba_dna.io import hdf5
from mamba_dna.pipelines.embed.writer import partial_path


def merge(shards: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Join shard files into one file identical to a single-process run."""
    guard_output(out, shards)
    infos = _check_shards(shards)
    out = prepare_output(out)
    with output_lock(out), os_errors(out), atomic_path(out, suffix=".h5") as tmp:
        srcs = [h5py.File(p, "r") for p, _, _ in infos]
        try:
            _write_merged(tmp, srcs, [p.name for p, _, _ in infos], infos[0][1])
        finally:
            for s in srcs:
                s.close()
    return out


def _check_shards(shards) -> list[tuple[Path, dict, np.ndarray]]:
    """(path, run attributes, item indices) per shard, after checking that the shards are
    complete, of one run, and hold every item exactly once."""
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
    return infos


def _write_merged(tmp: Path, srcs: list, names: list[str], ref: dict) -> None:
    """The merged file at `tmp`: items in global order, pooled rows permuted to match,
    per-position datasets copied as they are (they are keyed by the global index)."""
    parts = [hdf5.read_items(s) for s in srcs]
    order = np.concatenate([pt.index for pt in parts])  # global index per concatenated row
    cat = hdf5.Items(*(np.concatenate([getattr(pt, c) for pt in parts])
                       for c in ("chrom", "start", "end", "strand", "id", "index")))
    perm = np.argsort(order, kind="stable")
    attrs = {k: v for k, v in srcs[0].attrs.items()
             if k not in ("format", "format_version", "mamba_dna_version", "coordinates",
                          "d_model", "dtype", "per_position", "complete")}
    attrs["shard"] = ""
    attrs["merged_from"] = json.dumps(names)
    attrs["compression"] = ref["compression"]  # "gzip" for files from before the option
    has_pooled = "pooled" in srcs[0]
    hdf5.create(tmp, cat.take(perm), attrs, d_model=int(ref["d_model"]), pooled=has_pooled,
                per_position=bool(ref["per_position"]), dtype=str(ref["dtype"]))
    with h5py.File(tmp, "r+") as f:
        if has_pooled:
            f["pooled"][:] = np.concatenate([s["pooled"][:] for s in srcs])[perm]  # (n, d)
        if ref["per_position"]:
            for s in srcs:
                for key in s["per_position"]:
                    s.copy(s["per_position"][key], f["per_position"], name=key)
        f["items/done"][:] = 1
        f.attrs["complete"] = 1
