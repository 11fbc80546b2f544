"""`classify train --finetune`: the length ladder, learning a 2-class task whose classes
differ only in base order (two Markov sources with the same composition), the saved
directory round-tripping to identical probabilities, gradient checkpointing changing
nothing but memory, and streamed prediction matching the training forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mamba_dna.cli import main
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.model import MambaConfig, MambaLM
from mamba_dna.pipelines import classify as C
from mamba_dna.pipelines.classify import finetune as F


def markov_dna(n: int, shift: int, rng, p: float = 0.85) -> str:
    """Next base = previous + shift (mod 4) with probability p, else uniform: a doubly
    stochastic chain, so every class has a uniform composition and 1-mers carry nothing."""
    x = np.empty(n, np.int64)
    x[0] = rng.integers(4)
    keep, rand = rng.random(n) < p, rng.integers(0, 4, n)
    for i in range(1, n):
        x[i] = (x[i - 1] + shift) % 4 if keep[i] else rand[i]
    return "".join("ACGT"[v] for v in x)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    d = tmp_path_factory.mktemp("finetune")
    rng = np.random.default_rng(0)
    rows = ["file\tspecies"]
    for label, shift in (("up", 1), ("down", 3)):
        with open(d / f"{label}.fa", "w") as f:
            for k in range(2):
                f.write(f">{label}_{k}\n{markov_dna(6000, shift, rng)}\n")
        rows.append(f"{label}.fa\t{label}")
    (d / "labels.tsv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=4)).save_pretrained(d / "model")
    segs = C.make_segments(C.read_labels(d / "labels.tsv"), split_by="block", window=256,
                           block=1024, seed=0)
    wins = C.draw_windows(segs, 256, 16, 1 << 62, 0)
    return d, segs, wins


def test_length_ladder_steps_and_lr():
    cfg = F.FinetuneConfig(warmup_start=1024)
    assert F.stage_lengths(8192, cfg) == [1024, 2048, 4096, 8192]
    assert F.stage_lengths(3000, cfg) == [1024, 2048, 3000]
    assert F.stage_lengths(512, cfg) == [512]
    cfg = F.FinetuneConfig(warmup_lengths=(256, 1024, 4096))
    assert F.stage_lengths(2048, cfg) == [256, 1024, 2048]
    assert F.steps_per_stage(10, 3) == [3, 3, 4] and sum(F.steps_per_stage(7, 4)) == 7
    lr = [F.lr_factor(s, 100, cfg) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)  # 10 warmup steps
    assert all(a >= b for a, b in zip(lr[9:], lr[10:], strict=False)) and lr[-1] >= cfg.min_lr_ratio
    for bad in (dict(pool="max"), dict(warmup_lengths=(512, 256)), dict(steps=0),
                dict(grad_checkpointing="yes")):
        with pytest.raises(ConfigError):
            F.FinetuneConfig(**bad).validate()


def test_finetune_learns_order_and_round_trips(task, tmp_path):
    d, segs, wins = task
    cache = C.GenomeCache()
    before = MambaLM.from_pretrained(d / "model").state_dict()
    cfg = F.FinetuneConfig(steps=45, batch_size=8, lr=1e-2, warmup_start=64, seed=1)
    r = F.fit_eval_finetuned(d / "model", segs, wins, cache, cfg, rc_average=True)
    # composition is identical across classes: only a model that learned base order separates
    assert r["metrics"]["accuracy"] >= 0.9, r["metrics"]
    clf = r["clf"]
    after = clf.net.backbone.state_dict()
    assert not torch.equal(before["backbone.layers.0.mixer.in_proj.weight"],
                           after["backbone.layers.0.mixer.in_proj.weight"])  # end to end
    clf.save(tmp_path / "ft", cfg, {"test_metrics": r["metrics"]})
    for f in ("backbone/model.safetensors", "backbone/config.json", "head.safetensors",
              "config.json", "classifier.json"):
        assert (tmp_path / "ft" / f).stat().st_size > 0, f
    assert json.loads((tmp_path / "ft/config.json").read_text())["steps"] == 45
    back, man = F.FinetunedClassifier.load(tmp_path / "ft")
    assert man["labels"] == ["down", "up"] and man["window"] == 256
    seqs = C.window_tokens(cache, wins["test"])
    np.testing.assert_array_equal(back.predict_proba(seqs), clf.predict_proba(seqs))
    # predict through the CLI: tiled windows of new sequences from each source
    rng = np.random.default_rng(7)
    (tmp_path / "new.fa").write_text(f">a\n{markov_dna(1024, 1, rng)}\n>b\n{markov_dna(768, 3, rng)}\n")
    out = tmp_path / "pred.tsv"
    assert run(["classify", "predict", str(tmp_path / "new.fa"), "-c", str(tmp_path / "ft"),
                "--out", str(out)]) == 0
    lines = [ln.split("\t") for ln in out.read_text().splitlines()]
    got = {r[1]: (r[4], r[3]) for r in lines[1:]}
    assert lines[0][:5] == ["file", "record", "length", "n_windows", "prediction"]
    assert got == {"a": ("up", "4"), "b": ("down", "3")}
    # a changed head file is refused
    p = tmp_path / "ft" / "head.safetensors"
    raw = bytearray(p.read_bytes())
    raw[-3] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="sha256"):
        F.FinetunedClassifier.load(tmp_path / "ft")


def test_gradient_checkpointing_gives_the_same_model(task):
    d, segs, wins = task
    probs = []
    for ckpt in ("off", "on"):
        cfg = F.FinetuneConfig(steps=3, batch_size=4, lr=1e-2, warmup_lengths=(128,),
                               grad_checkpointing=ckpt)
        clf = F.finetune(d / "model", segs, ["down", "up"], 256, cfg, C.GenomeCache())
        assert clf.net.backbone.config.gradient_checkpointing is False  # switched off after
        seqs = C.window_tokens(C.GenomeCache(), wins["test"])
        probs.append(clf.predict_proba(seqs))
    np.testing.assert_allclose(probs[0], probs[1], rtol=1e-5, atol=1e-6)
    # prediction streams the backbone in pieces (state carried): same as the training forward
    ids = torch.from_numpy(np.stack(seqs).astype(np.int64))  # (n, 256)
    with torch.no_grad():
        full = torch.softmax(clf.net(ids), -1).double().numpy()  # (n, 2)
    np.testing.assert_allclose(clf.predict_proba(seqs, piece=100), full, rtol=1e-4, atol=1e-5)


def test_cli_finetune_column_and_kmer_ks(task, tmp_path):
    d, _, _ = task
    out = tmp_path / "cls"
    assert run(["classify", "train", "--labels", str(d / "labels.tsv"), "--model",
                str(d / "model"), "--out", str(out), "--window", "128", "--per-class", "8",
                "--block", "1024", "--lengths", "128,256", "--kmer-ks", "1,2", "--finetune",
                "--steps", "4", "--batch-size", "4", "--warmup-lengths", "64",
                "--finetune-pool", "mean"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["results"]) == {"model", "kmer", "finetuned"}
    assert rep["results"]["finetuned"]["n"] == rep["results"]["kmer"]["n"] == 8  # same test set
    assert rep["config"]["finetune"]["warmup_lengths"] == [64]
    assert json.loads((out / "finetuned/classifier.json").read_text())["pool"] == "mean"
    assert rep["config"]["kmer_ks"] == [1, 2]
    assert all(r["kmer_k"] in (1, 2) and "finetuned_accuracy" in r for r in rep["length_table"])
    assert rep["results"]["kmer"]["features"] == "kmer-2"  # 1-mers carry nothing here
    assert (out / "finetuned" / "classifier.json").exists()
    assert (out / "confusion_finetuned.png").read_bytes()[:4] == b"\x89PNG"
    assert "| finetuned |" in (out / "report.md").read_text()
    ev = C.evaluate(out / "finetuned", str(d / "labels.tsv"))
    assert ev["metrics"]["n"] == 4
    # mistakes: one line, exit 2
    assert run(["classify", "train", "--labels", str(d / "labels.tsv"), "--out", str(out),
                "--finetune"]) == 2  # no --model
    with pytest.raises(ConfigError, match="kmer-ks"):
        C.ClassifyConfig(labels="x", out="y", kmer_ks=(0, 3)).validate()


def run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code
