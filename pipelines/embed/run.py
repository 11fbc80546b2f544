"""`embed` top to bottom: setup (model, items, batches, the output file or the partial file
to resume) -> run (batch by batch; rows go to the writer thread) -> save (flag the file
complete and rename it into place)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mamba_dna import log
from mamba_dna.checks import nonfinite_count
from mamba_dna.device import resolve_device
from mamba_dna.errors import InputError
from mamba_dna.fsutil import (
    check_free_space,
    guard_output,
    os_errors,
    output_lock,
    prepare_output,
    sha256_file,
)
from mamba_dna.genome import Genome
from mamba_dna.io import hdf5
from mamba_dna.load import checkpoint_sha256, load_model
from mamba_dna.model import layer_index
from mamba_dna.pipelines.embed.arch import check_pool, describe, width
from mamba_dna.pipelines.embed.config import EmbedConfig
from mamba_dna.pipelines.embed.items import bed_items, item_tokens, window_items
from mamba_dna.pipelines.embed.stream import embed_batch, make_batches
from mamba_dna.pipelines.embed.writer import WriteQueue, partial_path, write_rows
from mamba_dna.rankshard import parse_shard, part_path


def shard_path(out: Path, shard: str | None) -> Path:
    """The file `embed --shard i/n --out OUT` writes (`rankshard.part_path`)."""
    return part_path(out, *parse_shard(shard), default_suffix=".h5")


def run_embed(cfg: EmbedConfig, model=None, checkpoint_sha: str | None = None) -> Path:
    """Write the embedding file for `cfg` and return its path (a shard file with --shard)."""
    # ---- setup
    out = shard_path(Path(cfg.out), cfg.shard)
    guard_output(out, [cfg.fasta, cfg.bed, cfg.model])
    if model is None:
        model = load_model(cfg.model, map_location=resolve_device(cfg.device))
        checkpoint_sha = checkpoint_sha256(cfg.model)
    if cfg.layer is not None:  # a bad --layer is refused before any file is created
        layer_index(cfg.layer, int(model.config.n_layer), f"--layer {cfg.layer}", "omitted (final norm)")
    check_pool(model, cfg.pool)  # "last" means nothing to a bidirectional model
    genome = Genome(cfg.fasta)
    plan = Plan.of(cfg, genome)
    prepare_output(out)
    with output_lock(out), os_errors(out):  # one writer per output; OS errors: one line
        f = _open_output(cfg, plan, out, _attrs(cfg, model, checkpoint_sha, plan))
        if f is None:
            return out
        # ---- run + save
        _embed_items(cfg, model, genome, plan, f)
        os.replace(partial_path(out), out)
    return out


@dataclass
class Plan:
    """Items, their batches (identical in every shard), and this shard's share of them."""

    items: hdf5.Items  # every item of the run
    mine: list[list[int]]  # this shard's batches (global item indices)
    file_items: hdf5.Items  # the items of this shard's file, in file order
    row_of: dict[int, int]  # global item index -> row in this file

    @classmethod
    def of(cls, cfg: EmbedConfig, genome) -> Plan:
        shard_i, shard_n = parse_shard(cfg.shard)
        stride = cfg.stride or cfg.window
        items = bed_items(cfg.bed, genome) if cfg.bed else window_items(genome, cfg.window, stride)
        batches = make_batches(items.length.tolist(), cfg.batch_tokens, cfg.max_batch)
        mine = [b for j, b in enumerate(batches) if j % shard_n == shard_i]
        rows = np.array([i for b in mine for i in b], dtype=np.int64)
        return cls(items, mine, items.take(rows), {int(g): r for r, g in enumerate(rows)})


def _attrs(cfg: EmbedConfig, model, checkpoint_sha: str | None, plan: Plan) -> dict:
    """The file's run attributes (schema: `mamba_dna.io.hdf5`)."""
    shard_i, shard_n = parse_shard(cfg.shard)
    return {
        "model_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "model_dir": str(cfg.model),
        "checkpoint_sha256": checkpoint_sha or "",
        "reference": Path(cfg.fasta).name,
        "reference_sha256": sha256_file(cfg.fasta),
        "window": int(cfg.window),
        "stride": int(cfg.stride or cfg.window or 0),
        "regions": Path(cfg.bed).name if cfg.bed else "",
        "pooling": cfg.pool,
        "layer": "final_norm" if cfg.layer is None else int(cfg.layer),
        "rc_average": int(cfg.rc_average),
        "dtype": cfg.dtype,
        "compression": cfg.compression,
        "per_position": int(cfg.per_position),
        "d_model": width(model, cfg.rc_average),  # columns stored (2 x d_model: PS halves)
        **describe(model, cfg.rc_average),  # architecture, objective, channels, rc_average_method
        "n_items_total": len(plan.items),
        "shard": f"{shard_i}/{shard_n}" if shard_n > 1 else "",
        "format_version": hdf5.FORMAT_VERSION,
        "embed_config": json.dumps(asdict(cfg), sort_keys=True),
    }


def _open_output(cfg: EmbedConfig, plan: Plan, out: Path, attrs: dict):
    """The partial file to write into (resumed or new), or None when `out` is already complete."""
    part = partial_path(out)
    if cfg.resume and part.exists():
        f = hdf5.open_for_resume(part, {k: attrs.get(k) for k in hdf5.RUN_KEYS})
        if not np.array_equal(f["items/index"][:], plan.file_items.index):
            f.close()
            raise InputError(f"{part}: its item list differs from this run's (FASTA/BED changed?)",
                             hint="delete it to start over")
        log.info(f"resuming {part}: {int(f['items/done'][:].sum())}/{len(plan.file_items)} items done")
        return f
    if cfg.resume and out.exists():
        log.info(f"{out} is already complete; nothing to resume")
        return None
    check_free_space(part, hdf5.expected_bytes(plan.file_items, attrs["d_model"], cfg.dtype,
                                               pooled=cfg.pool != "none", per_position=cfg.per_position))
    hdf5.create(part, plan.file_items, attrs, d_model=attrs["d_model"], pooled=cfg.pool != "none",
                per_position=cfg.per_position, dtype=cfg.dtype)
    return hdf5.open_for_write(part)


def _embed_items(cfg: EmbedConfig, model, genome, plan: Plan, f) -> None:
    """Every batch not yet done: the writer thread writes its rows, then its pooled rows and
    `done` flags, then flushes, in that order; the file is flagged complete at the end. `f`
    is closed on return (after an error, what is queued still lands)."""
    d = width(model, cfg.rc_average)
    # two pieces of the largest batch in flight at most (a piece is at most
    # max(batch_tokens, piece) positions x d x 4 bytes)
    writer = WriteQueue(max_bytes=2 * max(cfg.batch_tokens, cfg.piece) * d * 4)
    rows = _FileRows(cfg, f, plan, d)
    try:
        done = f["items/done"][:].astype(bool)  # (n_file,)
        left = [b for b in plan.mine if not all(done[plan.row_of[i]] for i in b)]
        bp_left = sum(int(plan.items.length[i]) for b in left for i in b)
        total_bp = int(plan.file_items.length.sum())
        with log.progress(f"embedding {Path(cfg.fasta).name}", total=total_bp, unit="bp") as bar:
            bar.advance(total_bp - bp_left)
            for batch in left:
                _embed_one_batch(cfg, model, genome, plan, batch, writer, rows)
                bar.advance(sum(int(plan.items.length[i]) for i in batch))
        writer.put(rows.complete)
        writer.close()  # raises the writer's error, if any
    finally:
        try:
            writer.close()  # after an error in this thread: what is queued still lands
        except BaseException:
            if writer.error is None:  # not the writer's error (already raised): a Ctrl-C
                raise
        finally:
            f.close()


def _embed_one_batch(cfg: EmbedConfig, model, genome, plan: Plan, batch: list[int],
                     writer: WriteQueue, rows: _FileRows) -> None:
    items = plan.items
    seqs = [item_tokens(genome, items.chrom[i], int(items.start[i]), int(items.end[i]),
                        items.strand[i]) for i in batch]
    file_rows = [plan.row_of[i] for i in batch]
    sink = None
    if cfg.per_position:
        names = [str(items.id[i]) for i in batch]
        writer.put(lambda: rows.create(file_rows, [len(x) for x in seqs], names))

        def sink(b, s, e, h, is_rc):
            a = h.numpy()  # (e-s, d) view of the piece: no copy
            _check_finite(cfg, a, str(items.id[batch[b]]))
            writer.put(lambda: write_rows(rows.dsets[file_rows[b]], s, e, a, is_rc), a.nbytes)

    pooled = embed_batch(model, seqs, pool=cfg.pool, layer=cfg.layer, rc_average=cfg.rc_average,
                         piece=cfg.piece, position_sink=sink, position_dtype=rows.position_dtype)
    if pooled is not None:
        for b, row in enumerate(pooled):  # (d,) per item
            _check_finite(cfg, row.astype(cfg.dtype, copy=False), str(items.id[batch[b]]))  # as stored
    writer.put(lambda: rows.finish(file_rows, pooled))


def _check_finite(cfg: EmbedConfig, a: np.ndarray, item_id: str) -> None:
    """A NaN/Inf embedding stops the run before it is written (never flagged done); the
    items written before it stay in the partial file, so --resume continues from there."""
    bad = nonfinite_count(a)
    if bad:
        raise InputError(f"{cfg.model}: the model's embedding of item {item_id} holds {bad:,} "
                         f"NaN/Inf value(s) of {a.size:,}; nothing of it was written",
                         hint="the checkpoint's activations overflow (a diverged run? try "
                              "--dtype float32 or another checkpoint)")


class _FileRows:
    """The writer thread's jobs on the open file: per-position datasets, pooled rows, flags."""

    def __init__(self, cfg: EmbedConfig, f, plan: Plan, d: int):
        self.cfg, self.f, self.plan, self.d = cfg, f, plan, d
        self.dsets: dict[int, object] = {}  # item row in this file -> its per-position dataset
        self.chunk_rows = min(hdf5.CHUNK_ROWS, cfg.piece)  # whole chunks per streamed piece
        # float16 rows are cast on the device; --rc-average averages in float32 first
        half = cfg.dtype == "float16" and not cfg.rc_average
        self.position_dtype = torch.float16 if half else torch.float32

    def create(self, rows: list[int], lengths: list[int], names: list[str]) -> None:
        self.dsets.clear()
        for r, n, name in zip(rows, lengths, names, strict=True):
            self.dsets[r] = hdf5.per_position_dataset(
                self.f, int(self.plan.file_items.index[r]), n, self.d, self.cfg.dtype, name,
                chunk_rows=self.chunk_rows, compression=self.cfg.compression)

    def finish(self, rows: list[int], pooled: np.ndarray | None) -> None:
        if pooled is not None:
            self.f["pooled"][rows[0] : rows[-1] + 1] = pooled.astype(self.cfg.dtype)
        self.f["items/done"][rows[0] : rows[-1] + 1] = 1
        self.f.flush()

    def complete(self) -> None:
        self.f.attrs["complete"] = 1
        self.f.flush()
