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

Bidirectional models (CaduceusLM: Caduceus-PS / -Ph, PlantCaduceus) cannot stream left to
right: each item runs in one `hidden` call (on a CPU the model tiles its scan with both
directions' states carried, so memory stays O(L x d)), and its rows are written piece by piece
like the streamed ones. `--rc-average` gives strand-symmetric rows for every architecture
(arch.py says how); pooling "last" is refused for them. The root attributes `architecture`,
`objective`, `channels` and `rc_average_method` say what made the file.

Sharding: batches (not items) are dealt out round-robin to `--shard i/n`, and a batch's
composition never depends on the shard, so `embed merge` of the shards holds exactly the
numbers a single run writes.

Files: arch.py (what kind of model: width, pooling, attributes), config.py (EmbedConfig),
items.py (windows, BED regions), stream.py (the model streamed piece by piece, pooling),
writer.py (the writer thread), run.py (the pipeline), merge.py (`embed merge`).

Python API (numpy out)::

    from mamba_dna.pipelines.embed import embed_sequences, per_position
    X = embed_sequences(model, [ids0, ids1], pool="mean", rc_average=True)   # (2, d)
    H = per_position(model, ids0)                                            # (L, d)
"""

from __future__ import annotations

from mamba_dna.lazy import lazy_getattr

# public name -> the module of this package that defines it, imported on first use (PEP 562)
# so the CLI reads EmbedConfig's defaults without importing torch
_EXPORTS = {
    "architecture": "arch", "check_pool": "arch", "describe": "arch", "is_bidirectional": "arch",
    "width": "arch",
    "DTYPES": "config", "POOLS": "config", "EmbedConfig": "config",
    "bed_items": "items", "item_tokens": "items", "window_items": "items",
    "merge": "merge",
    "run_embed": "run", "shard_path": "run",
    "embed_batch": "stream", "embed_sequences": "stream", "make_batches": "stream",
    "per_position": "stream", "stream_hidden": "stream",
    "WriteQueue": "writer", "partial_path": "writer", "write_rows": "writer",
}
__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS, globals())
