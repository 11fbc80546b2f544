"""Shard directories (tokenize output) and the resumable, rank-aware sampler."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import sha256_file
from mamba_dna.genome import Genome, GenomeWindows, WindowSpec
from mamba_dna.shards import ResumableSampler, ShardDataset, write_shards

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_DNA_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fastas(tmp_path) -> list[Path]:
    d = tmp_path / "fx"
    d.mkdir()
    a = shutil.copy(FIXTURES / "tiny.fa", d / "tiny.fa")
    b = shutil.copy(FIXTURES / "tiny.fa.gz", d / "other.fa.gz")
    return [Path(a), Path(b)]


SPEC = dict(length=256, stride=200, split_by="block", block_size=512, val_fraction=0.2,
            test_fraction=0.2, seed=1, max_n_fraction=0.5)


def test_shards_round_trip_against_genome_windows(fastas, tmp_path):
    out = tmp_path / "shards"
    manifest = write_shards(fastas, out, WindowSpec(**SPEC))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json"] + [f"{s}.{k}" for s in ("train", "val", "test")
                             for k in ("tokens.npy", "softmask.npy", "index.tsv")]
    )
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert [s["sha256"] for s in manifest["sources"]] == [sha256_file(p) for p in fastas]
    assert manifest["tokenizer"]["vocab"][4:] == list("ACGTN")
    assert manifest["window"]["length"] == 256 and manifest["window"]["split_by"] == "block"
    total = 0
    for split in ("train", "val", "test"):
        ds = ShardDataset(out, split)
        want = [w for f in fastas for w in GenomeWindows(Genome(f), split=split, **SPEC)]
        assert len(ds) == len(want) == manifest["counts"][split]
        assert ds.window_length == 256
        assert isinstance(ds.tokens, np.memmap)
        idx = ds.index
        for i, w in enumerate(want):
            tok, sm = ds[i]
            np.testing.assert_array_equal(tok, w.tokens)
            np.testing.assert_array_equal(sm, w.softmask)
            assert (idx["record"][i], idx["start"][i], idx["end"][i], idx["strand"][i]) == (
                w.chrom, w.start, w.end, w.strand)
        assert set(idx["source"]) <= {0, 1}
        if len(ds):
            tok, sm = ds.batch([len(ds) - 1, 0])  # (2, L) each, in the order asked
            np.testing.assert_array_equal(tok[0], ds[len(ds) - 1][0])
            np.testing.assert_array_equal(sm[1], ds[0][1])
        total += len(ds)
    # the soft-masked run chr1:500-800 is in the data
    assert total > 0 and manifest["n_dropped_for_N"] >= 1


def test_failure_midway_leaves_nothing_that_looks_complete(fastas, tmp_path):
    bad = fastas[0].parent / "bad.fa"
    bad.write_bytes(b">x\n" + b"ACGT" * 100 + b"\nAC*T\n")
    out = tmp_path / "shards"
    with pytest.raises(InputError, match=r"bad.fa: record 'x': invalid character b'\*' at offset 402"):
        write_shards([fastas[0], bad], out, WindowSpec(**SPEC))
    assert not out.exists()
    assert not list(tmp_path.glob(".shards*"))  # the temporary directory is gone too
    # --invalid N: mapped and counted
    m = write_shards([fastas[0], bad], out, WindowSpec(**SPEC), invalid="N")
    assert m["n_invalid_mapped_to_N"] == 1


def test_existing_output_needs_overwrite(fastas, tmp_path):
    out = tmp_path / "shards"
    write_shards(fastas[:1], out, WindowSpec(**SPEC))
    with pytest.raises(ConfigError, match="already exists"):
        write_shards(fastas[:1], out, WindowSpec(**SPEC))
    m = write_shards(fastas[:1], out, WindowSpec(**{**SPEC, "length": 128}), overwrite=True)
    assert ShardDataset(out, "train").window_length == 128 == m["window"]["length"]
    m = write_shards(fastas[:1], out, WindowSpec(**{**SPEC, "val_fraction": 0, "test_fraction": 0}),
                     overwrite=True)
    empty = ShardDataset(out, "val")  # an empty split still opens (0 windows)
    assert len(empty) == 0 == m["counts"]["val"] and empty.batch([])[0].shape == (0, 256)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a shard directory"):
        write_shards(fastas[:1], other, WindowSpec(**SPEC), overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"


def test_incomplete_directory_is_refused(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.tokens.npy").write_bytes(b"")
    with pytest.raises(InputError, match="not a complete shard directory"):
        ShardDataset(tmp_path / "half")
    with pytest.raises(ConfigError):
        ShardDataset(tmp_path / "half", split="dev")


# ----------------------------------------------------------------------------- sampler


def take(sampler, n_batches):
    out = []
    while len(out) < n_batches:
        for b in sampler:
            out.append(b)
            if len(out) == n_batches:
                break
    return out


def test_sampler_epochs_cover_everything_once():
    s = ResumableSampler(103, batch_size=10, seed=5)
    assert len(s) == 11
    e0 = list(s)
    e1 = list(s)
    assert sorted(sum(e0, [])) == list(range(103)) == sorted(sum(e1, []))
    assert e0 != e1  # a new permutation each epoch
    assert e0 == list(ResumableSampler(103, batch_size=10, seed=5))  # seeded
    assert e0 != list(ResumableSampler(103, batch_size=10, seed=6))
    assert list(ResumableSampler(5, 2, shuffle=False)) == [[0, 1], [2, 3], [4]]
    assert list(ResumableSampler(5, 2, shuffle=False, drop_last=True)) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("stop_after", [1, 7, 11, 12, 25])  # mid-epoch, at and past an epoch end
def test_sampler_resume_gives_the_same_batches(stop_after):
    ref = take(ResumableSampler(103, batch_size=10, seed=3), 40)
    first = ResumableSampler(103, batch_size=10, seed=3)
    got = take(first, stop_after)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    second = ResumableSampler(103, batch_size=10, seed=3)
    second.load_state_dict(state)
    got += take(second, 40 - stop_after)
    assert got == ref


def test_sampler_ranks_are_disjoint_equal_and_deterministic():
    ws = 3
    samplers = [ResumableSampler(100, batch_size=8, seed=2, rank=r, world_size=ws) for r in range(ws)]
    per_rank = [sum(list(s), []) for s in samplers]
    assert len({len(s) for s in samplers}) == 1  # same batch count on every rank (DDP)
    flat = sum(per_rank, [])
    assert len(flat) == len(set(flat)) == 99  # distinct windows, trimmed to a multiple of 3
    again = sum(list(ResumableSampler(100, batch_size=8, seed=2, rank=1, world_size=ws)), [])
    assert again == per_rank[1]


def test_sampler_refuses_mismatched_state():
    s = ResumableSampler(100, batch_size=8)
    with pytest.raises(ConfigError, match="batch_size=16"):
        s.load_state_dict({**s.state_dict(), "batch_size": 16})
    for kw in ({"n": 0, "batch_size": 1}, {"n": 10, "batch_size": 0},
               {"n": 10, "batch_size": 2, "rank": 2, "world_size": 2}):
        with pytest.raises(ConfigError):
            ResumableSampler(**kw)
