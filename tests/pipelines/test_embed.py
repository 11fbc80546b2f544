"""`mamba-dna embed`: the file read back with plain h5py matches direct model calls;
streaming in pieces == one pass; resume after a crash; shards + merge == one run."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from mamba_dna.cli import main
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.model import MambaConfig, MambaLM, rc_average_hidden
from mamba_dna.pipelines import embed as E
from mamba_dna.pipelines.embed import run as embed_run  # the module run_embed calls into
from mamba_dna.tokenizer import encode, reverse_complement

RECORDS = {"chr1": 2600, "chr2": 900, "chrM": 1301}  # small: CI runs on 2 shared cores


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("embed")
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=8)).eval()
    model.save_pretrained(d / "model")
    rng = np.random.default_rng(1)
    seqs = {}
    with open(d / "g.fa", "w") as f:
        for name, n in RECORDS.items():
            s = "".join(rng.choice(list("ACGTNacgt"), size=n, p=[.21] * 4 + [.04, .03, .03, .03, .03]))
            seqs[name] = s
            f.write(f">{name} test\n" + "\n".join(s[i : i + 70] for i in range(0, n, 70)) + "\n")
    (d / "r.bed").write_text("#c\tstart\tend\nchr1\t10\t700\tgeneA\t0\t-\nchrM\t0\t1301\nchr2\t5\t6\n")
    return d, model, seqs


def direct(model, ids, layer=None, rc=False):
    """Reference: one model call on the whole sequence, (L, d)."""
    t = torch.from_numpy(ids.astype(np.int64))[None]
    with torch.no_grad():
        h = rc_average_hidden(model, t, layer=layer) if rc else model.hidden(t, layer=layer)[0]
    return h[0].numpy()


def test_python_api_streaming_equals_one_pass(setup):
    _, model, seqs = setup
    ids = encode(seqs["chr1"])
    full = direct(model, ids)
    # pieces that do not divide L (and one of length 1) carry the state exactly
    for piece in (1, 397, 10_000):
        H = E.per_position(model, ids[:40] if piece == 1 else ids, piece=piece)
        ref = full[:40] if piece == 1 else full
        np.testing.assert_allclose(H, ref, rtol=1e-4, atol=1e-5)
    X = E.embed_sequences(model, [ids, ids[:900], ids[:900]], pool="mean", piece=333)
    np.testing.assert_allclose(X[0], full.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(X[1], direct(model, ids[:900]).mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(X[2], X[1], rtol=1e-5, atol=1e-6)  # batched == alone
    last = E.embed_sequences(model, [ids[:900]], pool="last", piece=256)
    np.testing.assert_allclose(last[0], direct(model, ids[:900])[-1], rtol=1e-4, atol=1e-5)
    mx = E.embed_sequences(model, [ids[:900]], pool="max", piece=256, layer=1)
    np.testing.assert_allclose(mx[0], direct(model, ids[:900], layer=1).max(0), rtol=1e-4, atol=1e-5)
    Hrc = E.per_position(model, ids, rc_average=True, piece=500)
    np.testing.assert_allclose(Hrc, direct(model, ids, rc=True), rtol=1e-4, atol=1e-5)
    # rc-average makes pooled mean strand-symmetric
    a = E.embed_sequences(model, [ids[:900]], pool="mean", rc_average=True)
    b = E.embed_sequences(model, [reverse_complement(ids[:900])], pool="mean", rc_average=True)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_file_read_back_with_h5py(setup, tmp_path):
    d, model, seqs = setup
    out = tmp_path / "emb.h5"
    rc = main_ok(["embed", "--fasta", str(d / "g.fa"), "--model", str(d / "model"), "--out",
                  str(out), "--window", "1000", "--stride", "600", "--per-position",
                  "--rc-average", "--piece", "256", "--compression", "gzip"])
    assert rc == 0
    with h5py.File(out, "r") as f:  # plain h5py only from here
        a = dict(f.attrs)
        assert a["format"] == "mamba-dna-embeddings" and a["complete"] == 1
        assert json.loads(a["model_config"])["d_model"] == 16
        assert a["reference"] == "g.fa" and len(a["reference_sha256"]) == 64
        assert len(a["checkpoint_sha256"]) == 64
        assert (a["window"], a["stride"], a["pooling"], a["rc_average"]) == (1000, 600, "mean", 1)
        assert a["layer"] == "final_norm" and "0-based half-open" in a["coordinates"]
        assert a["compression"] == "gzip"
        chrom = f["items/chrom"].asstr()[:]
        start, end = f["items/start"][:], f["items/end"][:]
        # windows: chr1 0,600,1200,1800(->2600); chr2 0(->900); chrM 0,600(->1301)
        assert list(zip(chrom, start, end, strict=True)) == [
            ("chr1", 0, 1000), ("chr1", 600, 1600), ("chr1", 1200, 2200), ("chr1", 1800, 2600),
            ("chr2", 0, 900), ("chrM", 0, 1000), ("chrM", 600, 1301)]
        assert f["items/done"][:].all() and list(f["items/index"][:]) == list(range(7))
        assert f["pooled"].shape == (7, 16)
        for r in range(7):
            ids = encode(seqs[chrom[r]][start[r] : end[r]])
            ref = direct(model, ids, rc=True)  # (L, d)
            pp = f["per_position"][f"{r:09d}"]
            assert pp.shape == (end[r] - start[r], 16) and pp.chunks[1] == 16
            assert pp.compression == "gzip" and pp.shuffle and pp.chunks[0] <= 256
            np.testing.assert_allclose(pp[:], ref, rtol=1e-4, atol=2e-5)
            np.testing.assert_allclose(f["pooled"][r], ref.mean(0), rtol=1e-4, atol=2e-5)


def main_ok(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_bed_strand_float16_layer(setup, tmp_path):
    d, model, seqs = setup
    cfg = E.EmbedConfig(fasta=str(d / "g.fa"), model=str(d / "model"), out=str(tmp_path / "b.h5"),
                        bed=str(d / "r.bed"), pool="last", layer=1, dtype="float16",
                        per_position=True, piece=128)
    out = E.run_embed(cfg)
    with h5py.File(out, "r") as f:
        assert list(f["items/id"].asstr()[:]) == ["geneA", "chrM:0-1301(+)", "chr2:5-6(+)"]
        assert list(f["items/strand"].asstr()[:]) == ["-", "+", "+"]
        assert f["pooled"].dtype == np.float16 and f["per_position/000000000"].dtype == np.float16
        ids = reverse_complement(encode(seqs["chr1"][10:700]))  # '-': the reverse complement
        ref = direct(model, ids, layer=1)
        np.testing.assert_allclose(f["per_position/000000000"][:], ref, rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(f["pooled"][0], ref[-1], rtol=2e-3, atol=2e-3)
        assert f["per_position/000000002"].shape == (1, 16)


def test_resume_after_crash(setup, tmp_path, monkeypatch):
    d, model, _ = setup
    kw = dict(fasta=str(d / "g.fa"), model=str(d / "model"), window=500, per_position=True,
              max_batch=2)  # 500-bp windows: chr1 5 + a 100-bp tail, chr2 2, chrM 3
    ref = E.run_embed(E.EmbedConfig(out=str(tmp_path / "ref.h5"), **kw))
    out = tmp_path / "cut.h5"
    real = E.embed_batch
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # a time limit / Ctrl-C in the middle of the run
        return real(*a, **k)

    monkeypatch.setattr(embed_run, "embed_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        E.run_embed(E.EmbedConfig(out=str(out), **kw))
    part = E.partial_path(out)
    assert not out.exists() and part.exists()
    with h5py.File(part, "r") as f:
        assert f.attrs["complete"] == 0
        n_done = int(f["items/done"][:].sum())
    with h5py.File(ref, "r") as f:
        lengths = (f["items/end"][:] - f["items/start"][:]).tolist()
    batches = E.make_batches(lengths, 1 << 16, 2)  # chr1: 5 x 500 + 100 bp, chr2 2, chrM 3
    assert n_done == sum(len(b) for b in batches[:3])  # the 3 finished batches were recorded
    # resuming with other settings is refused
    with pytest.raises(InputError, match="different settings"):
        E.run_embed(E.EmbedConfig(out=str(out), **{**kw, "window": 400}, resume=True))
    calls["n"] = -100
    E.run_embed(E.EmbedConfig(out=str(out), resume=True, **kw))
    assert calls["n"] == -100 + len(batches) - 3  # finished batches were skipped
    assert out.exists() and not part.exists()
    assert_same_file(ref, out)


def assert_same_file(a, b):
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for col in ("index", "chrom", "start", "end", "strand", "id", "done"):
            assert np.array_equal(fa["items"][col][:], fb["items"][col][:]), col
        if "pooled" in fa:
            assert np.array_equal(fa["pooled"][:], fb["pooled"][:])
        if "per_position" in fa:
            assert sorted(fa["per_position"]) == sorted(fb["per_position"])
            for k in fa["per_position"]:
                assert np.array_equal(fa["per_position"][k][:], fb["per_position"][k][:]), k
        for k in ("model_config", "checkpoint_sha256", "reference_sha256", "window", "layer"):
            assert fa.attrs[k] == fb.attrs[k]
        assert fb.attrs["complete"] == 1 and fb.attrs["shard"] == ""


def test_shards_merge_equal_single_run(setup, tmp_path):
    d, _, _ = setup
    kw = dict(fasta=str(d / "g.fa"), model=str(d / "model"), window=600, stride=500,
              per_position=True, rc_average=True, max_batch=3, pool="max")
    single = E.run_embed(E.EmbedConfig(out=str(tmp_path / "one.h5"), **kw))
    shards = [E.run_embed(E.EmbedConfig(out=str(tmp_path / "s.h5"), shard=f"{i}/3", **kw))
              for i in range(3)]
    assert [p.name for p in shards] == [f"s.shard{i}-of-3.h5" for i in range(3)]
    with pytest.raises(InputError, match="missing"):
        E.merge(shards[:2], tmp_path / "m.h5")
    with pytest.raises(InputError, match="also in"):
        E.merge([*shards, shards[0]], tmp_path / "m.h5")
    rc = main_ok(["embed", "merge", *map(str, shards[::-1]), "--out", str(tmp_path / "m.h5")])
    assert rc == 0
    assert_same_file(single, tmp_path / "m.h5")


def test_user_mistakes(setup, tmp_path):
    d, _, _ = setup
    base = dict(fasta=str(d / "g.fa"), model=str(d / "model"), out=str(tmp_path / "x.h5"))
    with pytest.raises(ConfigError, match="write nothing"):
        E.run_embed(E.EmbedConfig(pool="none", **base))
    with pytest.raises(ConfigError, match="i/n"):
        E.run_embed(E.EmbedConfig(shard="3/3", **base))
    bad = tmp_path / "bad.bed"
    bad.write_text("chr1\t100\t50\n")
    with pytest.raises(InputError, match=r"bad.bed: line 1: .*start < end"):
        E.run_embed(E.EmbedConfig(bed=str(bad), **base))
    bad.write_text("chr1\t0\t10\nchrX\t0\t10\n")
    with pytest.raises(InputError, match="chrX"):
        E.run_embed(E.EmbedConfig(bed=str(bad), **base))
    assert main_ok(["embed", "--fasta", str(d / "g.fa"), "--out", "x.h5"]) == 2  # no --model


def test_unequal_lengths_in_one_batch_pool_each_on_its_own(setup):
    """Right padding: each row is pooled over its own valid positions only."""
    _, model, seqs = setup
    ids = encode(seqs["chr1"])
    a, b = ids[:1000], ids[1000:1333]  # b ends inside the second of three 400-bp pieces
    for pool in ("mean", "max", "last"):
        both = E.embed_batch(model, [a, b], pool=pool, piece=400)  # (2, d)
        for row, x in zip(both, (a, b), strict=True):
            ref = direct(model, x)  # (L, d)
            want = {"mean": ref.mean(0), "max": ref.max(0), "last": ref[-1]}[pool]
            np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-5, err_msg=pool)


def test_compression_options_round_trip(setup, tmp_path):
    """Every filter stores the same numbers; the choice is recorded and checked on resume."""
    d, _, _ = setup
    kw = dict(fasta=str(d / "g.fa"), model=str(d / "model"), bed=str(d / "r.bed"),
              per_position=True, dtype="float16", piece=300)
    files = {c: E.run_embed(E.EmbedConfig(out=str(tmp_path / f"{c}.h5"), compression=c, **kw))
             for c in ("lzf", "none")}
    with h5py.File(files["lzf"], "r") as fl, h5py.File(files["none"], "r") as fn:
        assert fl.attrs["compression"] == "lzf" and fn.attrs["compression"] == "none"
        for k in fl["per_position"]:
            pl, pn = fl["per_position"][k], fn["per_position"][k]
            assert pl.compression == "lzf" and pl.shuffle and pn.compression is None
            assert pl.chunks[0] <= 300 and pl.dtype == np.float16
            assert np.array_equal(pl[:], pn[:]), k
    with pytest.raises(ConfigError, match="lzf, gzip, none"):
        E.run_embed(E.EmbedConfig(out=str(tmp_path / "x.h5"), compression="zstd", **kw))


def test_writer_error_stops_the_run_and_resume_finishes_it(setup, tmp_path, monkeypatch):
    """A failed write (disk full, quota) is raised in the caller; no final file appears; only
    items whose rows all landed are marked done; --resume then gives the reference file."""
    d, _, _ = setup
    kw = dict(fasta=str(d / "g.fa"), model=str(d / "model"), window=500, per_position=True,
              rc_average=True, max_batch=2, piece=200)
    ref = E.run_embed(E.EmbedConfig(out=str(tmp_path / "ref.h5"), **kw))
    real = E.write_rows
    calls = {"n": 0}

    def failing(*a):
        calls["n"] += 1
        if calls["n"] == 25:  # inside the 3rd batch (each 500-bp item: 3 fwd + 3 rc pieces)
            raise OSError(28, "No space left on device")
        real(*a)

    monkeypatch.setattr(embed_run, "write_rows", failing)
    out = tmp_path / "cut.h5"
    with pytest.raises(InputError, match="no space left on the device"):  # one line (os_errors)
        E.run_embed(E.EmbedConfig(out=str(out), **kw))
    assert not out.exists() and calls["n"] == 25  # nothing was written after the failure
    with h5py.File(E.partial_path(out), "r") as f, h5py.File(ref, "r") as fr:
        assert f.attrs["complete"] == 0
        done = f["items/done"][:]
        assert done.sum() == 4 and done[:4].all()  # the two batches before the failure
        for r in range(4):
            k = f"{r:09d}"
            assert np.array_equal(f["per_position"][k][:], fr["per_position"][k][:])
    monkeypatch.setattr(embed_run, "write_rows", real)
    E.run_embed(E.EmbedConfig(out=str(out), resume=True, **kw))
    assert_same_file(ref, out)


def test_writer_keeps_order_and_bounds_memory():
    w = E.WriteQueue(max_bytes=100)
    seen, peak = [], {"q": 0}

    def job(k):
        peak["q"] = max(peak["q"], w._queued)
        seen.append(k)

    for k in range(50):
        w.put(lambda k=k: job(k), nbytes=40)
    w.close()
    assert seen == list(range(50)) and peak["q"] <= 100
    w = E.WriteQueue(max_bytes=100)
    w.put(lambda: 1 / 0)
    w.put(lambda: seen.append("after"))  # may or may not be accepted, never run
    with pytest.raises(ZeroDivisionError):
        w.close()
    assert seen[-1] == 49
