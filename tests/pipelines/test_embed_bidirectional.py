"""`mamba-dna embed` with bidirectional models (the Caduceus-layout fixture checkpoints in
../shared/data/models): pooled rows equal a direct `model.hidden` on the same window,
--rc-average is strand-symmetric (an item and its reverse complement give the same pooled row
and mirrored per-position rows), the root attributes say what made the file, a long item
tiled by the model equals one pass, and pooling "last" is refused."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mamba_dna.cli import main
from mamba_dna.genome import Genome
from mamba_dna.load import load_model
from mamba_dna.pipelines import embed as E
from mamba_dna.tokenizer import reverse_complement

PHIX = "species/phage/NC_001422_1.fna.gz"  # phiX174, 5,386 bp
# fixture -> (architecture, d_model)
FIXTURES = {"caduceus_ps": ("caduceus-ps", 32), "caduceus_ph": ("caduceus-ph", 48),
            "caduceus_plant": ("caduceus-ps", 32)}


@pytest.fixture
def fasta(shared_data) -> Path:
    f = shared_data / PHIX
    if not f.exists():
        pytest.skip(f"{f}: shared data not present")
    return f


def model_dir(shared_data: Path, name: str) -> Path:
    d = shared_data / "models" / name
    if not (d / "config.json").exists():
        pytest.skip(f"{d}: shared fixture checkpoint not present")
    return d


def cli(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def direct(model, ids: np.ndarray, rc_average: bool = False, layer=None) -> np.ndarray:
    """Reference: one `model.hidden` call on the whole window, (L, C)."""
    t = torch.from_numpy(ids.astype(np.int64))[None]
    with torch.no_grad():
        return model.hidden(t, layer=layer, rc_average=rc_average)[0].numpy()


@pytest.mark.parametrize("name", list(FIXTURES))
def test_pooled_rows_equal_direct_hidden_and_attributes(name, tmp_path, shared_data, fasta):
    mdir = model_dir(shared_data, name)
    arch, d = FIXTURES[name]
    out = tmp_path / "emb.h5"
    # 1000-bp windows: five full ones and a 386-bp tail (a batch of its own length)
    assert cli(["embed", "--fasta", str(fasta), "--model", str(mdir), "--out", str(out),
                "--window", "1000", "--pool", "mean", "--per-position", "--piece", "300"]) == 0
    model = load_model(mdir)
    g = Genome(fasta)
    width = 2 * d if arch == "caduceus-ps" else d  # PS without --rc-average: both halves
    with h5py.File(out, "r") as f:
        a = dict(f.attrs)
        assert (a["architecture"], a["objective"], a["pooling"]) == (arch, "mlm", "mean")
        assert a["d_model"] == width and a["rc_average"] == 0 and a["rc_average_method"] == ""
        assert a["channels"].startswith("2 x d_model") == (arch == "caduceus-ps")
        assert json.loads(a["model_config"])["d_model"] == d and a["complete"] == 1
        assert f["pooled"].shape == (6, width)
        for r in range(6):
            s, e = int(f["items/start"][r]), int(f["items/end"][r])
            ref = direct(model, g.tokens(f["items/chrom"].asstr()[r], s, e)[0])  # (L, width)
            np.testing.assert_allclose(f["pooled"][r], ref.mean(0), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(f["per_position"][f"{r:09d}"][:], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(FIXTURES))
def test_rc_average_is_strand_symmetric(name, tmp_path, shared_data, fasta):
    mdir = model_dir(shared_data, name)
    arch, d = FIXTURES[name]
    rec = Genome(fasta).names[0]
    bed = tmp_path / "r.bed"  # the same regions on both strands ('-' = reverse complement)
    bed.write_text(f"{rec}\t100\t900\tfwd\t0\t+\n{rec}\t100\t900\trev\t0\t-\n"
                   f"{rec}\t2000\t2513\tfwd2\t0\t+\n{rec}\t2000\t2513\trev2\t0\t-\n")
    for pool in ("mean", "max"):
        out = tmp_path / f"{pool}.h5"
        assert cli(["embed", "--fasta", str(fasta), "--model", str(mdir), "--out", str(out),
                    "--bed", str(bed), "--pool", pool, "--rc-average", "--per-position"]) == 0
        with h5py.File(out, "r") as f:
            assert f.attrs["d_model"] == d and f.attrs["channels"] == "d_model"
            assert f.attrs["rc_average_method"] == ("rcps_halves" if arch == "caduceus-ps" else "rc_pass")
            X = f["pooled"][:]  # (4, d)
            assert X.shape == (4, d) and np.abs(X).max() > 1e-3
            np.testing.assert_allclose(X[1], X[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(X[3], X[2], rtol=1e-5, atol=1e-6)
            assert not np.allclose(X[0], X[2], atol=1e-3)  # different regions differ
            fwd, rev = f["per_position/000000000"][:], f["per_position/000000001"][:]
            np.testing.assert_allclose(rev, fwd[::-1], rtol=1e-5, atol=1e-6)
    # and they are what the model itself calls strand-symmetric
    model = load_model(mdir)
    ids = Genome(fasta).tokens(rec, 100, 900)[0]
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["per_position/000000000"][:], direct(model, ids, True),
                                   rtol=1e-5, atol=1e-6)
    # without --rc-average the two strands differ (so the test above can fail)
    X = E.embed_sequences(model, [ids, reverse_complement(ids)], pool="mean")
    assert not np.allclose(X[0], X[1], atol=1e-4)


def test_long_item_tiled_by_the_model_equals_one_pass(tmp_path, monkeypatch, shared_data, fasta):
    """The whole 5,386-bp record in tiles of 1,024 scan positions (what a megabase item gets
    on a CPU) gives the numbers of one untiled pass; layer K works the same way."""
    mdir = model_dir(shared_data, "caduceus_ps")
    model = load_model(mdir)
    g = Genome(fasta)
    ids = g.tokens(g.names[0], 0, g.lengths[g.names[0]])[0]
    monkeypatch.setenv("MAMBA_DNA_CPU_TILE", "0")
    ref = direct(model, ids, True, layer=1)  # (L, d), one pass
    monkeypatch.setenv("MAMBA_DNA_CPU_TILE", "1")  # the smallest tile: 1,024 tokens
    out = tmp_path / "rec.h5"
    assert cli(["embed", "--fasta", str(fasta), "--model", str(mdir), "--out", str(out),
                "--layer", "1", "--rc-average", "--per-position", "--pool", "max",
                "--dtype", "float16"]) == 0
    with h5py.File(out, "r") as f:
        assert f.attrs["layer"] == 1 and f["pooled"].dtype == np.float16
        pp = f["per_position/000000000"][:].astype(np.float32)
        np.testing.assert_allclose(pp, ref, rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(f["pooled"][0].astype(np.float32), ref.max(0), rtol=2e-3, atol=2e-4)


def test_pool_last_is_refused_for_bidirectional(tmp_path, capsys, shared_data, fasta):
    mdir = model_dir(shared_data, "caduceus_ph")
    out = tmp_path / "x.h5"
    assert cli(["embed", "--fasta", str(fasta), "--model", str(mdir), "--out", str(out),
                "--window", "1000", "--pool", "last"]) == 2
    err = capsys.readouterr().err
    assert "--pool last" in err and "bidirectional" in err and "Traceback" not in err
    assert not out.exists() and not E.partial_path(out).exists()


def test_hf_id_from_an_offline_cache(tmp_path, hf_offline_cache, shared_data, fasta):
    """`embed --model hf:ORG/NAME` (a PlantCaduceus-layout checkpoint in the hub cache, no
    network) writes what the directory gives, and records the id and the weights' sha256."""
    mdir = model_dir(shared_data, "caduceus_plant")
    spec = hf_offline_cache(mdir, "org/plant")
    files = {}
    for tag, m in (("dir", str(mdir)), ("hub", spec)):
        files[tag] = tmp_path / f"{tag}.h5"
        assert cli(["embed", "--fasta", str(fasta), "--model", m, "--out", str(files[tag]),
                    "--window", "2000", "--rc-average"]) == 0
    with h5py.File(files["dir"], "r") as a, h5py.File(files["hub"], "r") as b:
        assert b.attrs["model_dir"] == spec and b.attrs["architecture"] == "caduceus-ps"
        assert b.attrs["checkpoint_sha256"] == a.attrs["checkpoint_sha256"]
        assert np.array_equal(a["pooled"][:], b["pooled"][:]) and b["pooled"].shape == (3, 32)


def test_shards_merge_keep_the_new_attributes(tmp_path, shared_data, fasta):
    """Two shards of a Caduceus-PS run merge into the single run's numbers and attributes."""
    mdir = model_dir(shared_data, "caduceus_ps")
    kw = dict(fasta=str(fasta), model=str(mdir), window=1000, per_position=True, max_batch=2)
    single = E.run_embed(E.EmbedConfig(out=str(tmp_path / "one.h5"), **kw))
    shards = [E.run_embed(E.EmbedConfig(out=str(tmp_path / "s.h5"), shard=f"{i}/2", **kw))
              for i in range(2)]
    merged = E.merge(shards, tmp_path / "m.h5")
    with h5py.File(single, "r") as a, h5py.File(merged, "r") as b:
        for k in ("architecture", "objective", "channels", "rc_average_method", "d_model"):
            assert a.attrs[k] == b.attrs[k], k
        assert np.array_equal(a["pooled"][:], b["pooled"][:]) and b["pooled"].shape == (6, 64)
        for k in a["per_position"]:
            assert np.array_equal(a["per_position"][k][:], b["per_position"][k][:]), k
