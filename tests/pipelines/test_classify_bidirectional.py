"""`mamba-dna classify train` with bidirectional backbones: the linear probe on a Caduceus
fixture checkpoint (strand-symmetric features by default, so a window and its reverse
complement get the same probabilities), `--finetune` of a random tiny CaduceusLM with the
mean-pooled head (streamed prediction == the training forward), and pooling "last" refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_dna.caduceus import CaduceusLM, ModelConfig
from mamba_dna.cli import main
from mamba_dna.load import load_model
from mamba_dna.pipelines import classify as C
from mamba_dna.pipelines.classify import finetune as F
from mamba_dna.tokenizer import encode, reverse_complement

# class -> base composition (A, C, G, T)
COMPOSITION = {"gc_rich": [.15, .35, .35, .15], "at_rich": [.35, .15, .15, .35],
               "mixed": [.25, .25, .25, .25]}


def cli(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("classify_bidir")
    rng = np.random.default_rng(0)
    rows = ["file\tspecies"]
    for sp, comp in COMPOSITION.items():
        for strain in ("s1", "s2"):
            fn = f"{sp}__{strain}.fa"
            s = "".join(rng.choice(list("ACGT"), size=3000, p=comp))
            (d / fn).write_text(f">{sp}_{strain}\n{s}\n")
            rows.append(f"{fn}\t{sp}")
    (d / "labels.tsv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)  # a random tiny Caduceus-PS in our own format
    CaduceusLM(ModelConfig(d_model=16, n_layer=1, d_state=4, bidirectional=True, rcps=True)
               ).save_pretrained(d / "ps")
    return d


def ps_fixture(shared_data: Path) -> Path:
    d = shared_data / "models" / "caduceus_ps"
    if not (d / "config.json").exists():
        pytest.skip(f"{d}: shared fixture data not present")
    return d


def test_probe_on_a_caduceus_checkpoint_is_strand_symmetric(data, tmp_path, hf_offline_cache,
                                                             shared_data):
    """The Caduceus-PS fixture as hf:ORG/NAME from an offline hub cache (issue 17's `classify
    --model hf:...`), through train and then predict (which loads the id again)."""
    out = tmp_path / "cls"
    spec_id = hf_offline_cache(ps_fixture(shared_data), "org/ps")
    assert cli(["classify", "train", "--labels", str(data / "labels.tsv"), "--model",
                spec_id, "--out", str(out), "--window", "256", "--per-class", "8",
                "--split-by", "file", "--block", "512", "--lengths", "256"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["rc_average"] is True  # the default for a bidirectional backbone
    assert set(rep["results"]) == {"model", "kmer"}
    assert sum(map(sum, rep["results"]["model"]["confusion"])) == 3 * 4
    man = json.loads((out / "model" / "classifier.json").read_text())
    assert man["features"]["rc_average"] and man["features"]["model_config"]["rcps"]
    assert man["features"]["pool"] == "mean" and man["features"]["model_dir"] == spec_id
    proba, classes, _ = C.load_classifier(out / "model", "cpu")
    rng = np.random.default_rng(5)
    seqs = [encode("".join(rng.choice(list("ACGT"), size=n, p=COMPOSITION[c])))
            for n, c in ((256, "gc_rich"), (300, "at_rich"), (256, "mixed"))]
    P = proba(seqs)  # (3, K)
    Prc = proba([reverse_complement(s) for s in seqs])
    np.testing.assert_allclose(P, Prc, rtol=1e-6, atol=1e-7)
    assert P.shape == (3, 3) and np.ptp(P, axis=0).max() > 1e-4  # not one constant answer
    # --no-rc-average: the PS features are its full 2 x d_model halves, no longer symmetric
    model = load_model(ps_fixture(shared_data))
    spec = C.FeatureSpec("embedding", rc_average=False)
    X = C.features(spec, seqs[:1], model)
    Xrc = C.features(spec, [reverse_complement(seqs[0])], model)
    assert X.shape == (1, 64) and not np.allclose(X, Xrc, atol=1e-4)


def test_pool_last_refused_for_bidirectional(data, tmp_path, capsys):
    base = ["classify", "train", "--labels", str(data / "labels.tsv"), "--model", str(data / "ps"),
            "--out", str(tmp_path / "o"), "--window", "256", "--per-class", "4", "--split-by",
            "file", "--block", "512", "--lengths", "256"]
    assert cli([*base, "--pool", "last"]) == 2
    err = capsys.readouterr().err
    assert "--pool last" in err and "bidirectional" in err and "Traceback" not in err
    assert cli([*base, "--finetune", "--steps", "1", "--finetune-pool", "last"]) == 2
    assert "--finetune-pool last" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_finetune_a_tiny_caduceus_with_a_mean_pooled_head(data, tmp_path):
    out = tmp_path / "ft"
    assert cli(["classify", "train", "--labels", str(data / "labels.tsv"), "--model",
                str(data / "ps"), "--out", str(out), "--window", "128", "--per-class", "6",
                "--split-by", "file", "--block", "256", "--lengths", "128", "--finetune",
                "--steps", "3", "--batch-size", "4", "--no-finetune-table"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["finetune"]["pool"] == "mean"  # the default for bidirectional
    assert rep["results"]["finetuned"]["n"] == 3 * 3
    man = json.loads((out / "finetuned" / "classifier.json").read_text())
    assert man["pool"] == "mean" and man["architecture"] == "caduceus-ps"
    assert "CaduceusLM" in man["classifier"]
    clf, _ = F.FinetunedClassifier.load(out / "finetuned", "cpu")
    assert isinstance(clf.net.backbone, CaduceusLM) and clf.net.pool == "mean"
    # the tuned backbone moved off the pretrained weights
    start = CaduceusLM.from_pretrained(data / "ps")
    assert not torch.allclose(start.embedding.weight, clf.net.backbone.embedding.weight)
    rng = np.random.default_rng(7)
    seqs = [encode("".join(rng.choice(list("ACGT"), size=128))) for _ in range(3)]
    P = clf.predict_proba(seqs)  # through embed_batch
    with torch.no_grad():  # the training forward pass on the same windows
        logits = clf.net(torch.from_numpy(np.stack(seqs).astype(np.int64)))
    np.testing.assert_allclose(P, torch.softmax(logits, -1).double().numpy(), rtol=1e-5, atol=1e-6)
    # a PS head on its averaged halves: a window and its reverse complement agree
    np.testing.assert_allclose(P, clf.predict_proba([reverse_complement(s) for s in seqs]),
                               rtol=1e-5, atol=1e-6)
