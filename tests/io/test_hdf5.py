"""The embedding file schema: items round-trip, per-position datasets, resume checks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.io import hdf5


def items(n=3):
    return hdf5.Items(np.array(["chr1", "chr1", "chrM/x"][:n], object),
                      np.array([0, 100, 5][:n], np.int64), np.array([100, 250, 6][:n], np.int64),
                      np.array(["+", "-", "+"][:n], object), np.array(["a", "b", "c"][:n], object))


ATTRS = {"model_config": "{}", "checkpoint_sha256": "ab", "reference": "g.fa",
         "reference_sha256": "cd", "window": 0, "stride": 0, "regions": "r.bed", "pooling": "mean",
         "layer": "final_norm", "rc_average": 0, "n_items_total": 3, "shard": ""}


def test_create_and_read_back(tmp_path):
    p = tmp_path / "e.h5"
    it = items()
    hdf5.create(p, it, ATTRS, d_model=4, pooled=True, per_position=True, dtype="float16")
    with h5py.File(p, "r+") as f:
        back = hdf5.read_items(f)
        for col in ("chrom", "start", "end", "strand", "id", "index"):
            assert list(getattr(back, col)) == list(getattr(it, col))
        assert list(back.length) == [100, 150, 1]
        assert f["pooled"].shape == (3, 4) and f["pooled"].dtype == np.float16
        assert f.attrs["complete"] == 0 and not f["items/done"][:].any()
        ds = hdf5.per_position_dataset(f, 1, 150, 4, "float16", "b", chunk_rows=64)
        assert ds.name == "/per_position/000000001" and ds.chunks == (64, 4)
        ds[:] = 1.0
        # writing an item again (after a crash) replaces its dataset
        ds = hdf5.per_position_dataset(f, 1, 150, 4, "float16", "b", chunk_rows=64)
        assert not ds[:].any()
    s = hdf5.summary(p)
    assert (s["n_items"], s["n_done"], s["d_model"]) == (3, 0, 4)
    assert s["format"] == hdf5.FORMAT and s["coordinates"].startswith("0-based")


def test_resume_refuses_other_runs_and_foreign_files(tmp_path):
    p = tmp_path / "e.h5"
    hdf5.create(p, items(), ATTRS, d_model=4, pooled=True, per_position=False, dtype="float32")
    expect = {**ATTRS, "format_version": 1, "dtype": "float32", "per_position": 0, "d_model": 4,
              "compression": hdf5.DEFAULT_COMPRESSION}
    f = hdf5.open_for_resume(p, {k: expect.get(k) for k in hdf5.RUN_KEYS})
    f.close()
    with pytest.raises(InputError, match="window"):
        hdf5.open_for_resume(p, {k: {**expect, "window": 10}.get(k) for k in hdf5.RUN_KEYS})
    other = tmp_path / "o.h5"
    with h5py.File(other, "w") as g:
        g["x"] = 1
    with pytest.raises(InputError, match="not a mamba-dna embedding file"):
        hdf5.open_for_resume(other, expect)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(p.read_bytes()[:200])  # a file cut off mid-write
    with pytest.raises(InputError, match="cannot be opened"):
        hdf5.open_for_resume(cut, expect)


def test_item_columns_must_agree():
    with pytest.raises(ValueError, match="rows"):
        hdf5.Items(np.array(["a"], object), np.array([0, 1]), np.array([1]),
                   np.array(["+"], object), np.array(["x"], object))


def test_compression_attribute_and_filters(tmp_path):
    p = tmp_path / "e.h5"
    hdf5.create(p, items(), {**ATTRS, "compression": "gzip"}, d_model=4, pooled=False,
                per_position=True, dtype="float32")
    with h5py.File(p, "r+") as f:
        assert hdf5.run_attrs(f)["compression"] == "gzip"
        x = np.random.default_rng(0).standard_normal((150, 4)).astype(np.float32)
        for c, filt in (("lzf", "lzf"), ("gzip", "gzip"), ("none", None)):
            ds = hdf5.per_position_dataset(f, 1, 150, 4, "float32", "b", chunk_rows=64,
                                           compression=c)
            ds[:100] = x[:100]  # a chunk filled in two writes (kept in the chunk cache)
            ds[100:] = x[100:]
            assert ds.compression == filt and np.array_equal(ds[:], x)
        del f.attrs["compression"]  # a file written before the attribute existed: gzip
        assert hdf5.run_attrs(f)["compression"] == "gzip"
    with pytest.raises(ConfigError, match="expected one of lzf"):
        hdf5.check_compression("zstd")
