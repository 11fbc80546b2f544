"""`classify predict` / `classify evaluate`: a trained classifier (linear or fine-tuned) on
new FASTA files, per record."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mamba_dna import log
from mamba_dna.device import resolve_device
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import atomic_path, guard_output, os_errors, prepare_output

from .data import read_labels
from .finetune import FORMAT, FinetunedClassifier
from .probe import LinearClassifier, features, load_backbone
from .report import metrics


def predict_files(classifier: str | os.PathLike, fastas: Sequence[str], *, window: int | None = None,
                  aggregate: str = "mean", device: str = "auto") -> list[dict]:
    """Classify tiled windows of each record; aggregate per record (mean probability or
    majority vote). Records shorter than the window are classified whole."""
    from mamba_dna.genome import Genome

    if aggregate not in ("mean", "majority"):
        raise ConfigError(f"--aggregate {aggregate!r}: expected mean or majority")
    proba, classes, man = load_classifier(classifier, device)
    window = int(window or man.get("window") or 4096)
    rows = []
    for fa in fastas:
        g = Genome(fa, invalid="N")
        for name in g.names:
            n = g.lengths[name]
            starts = list(range(0, max(n - window, 0) + 1, window)) if n >= window else [0]
            seqs = [g.tokens(name, s, min(s + window, n))[0] for s in starts]
            P = proba(seqs)  # (windows, K)
            if aggregate == "mean":
                p = P.mean(0)
            else:
                p = np.bincount(P.argmax(1), minlength=len(classes)) / len(P)
            k = int(np.argmax(p))
            rows.append({"file": str(fa), "record": name, "length": n, "n_windows": len(seqs),
                         "prediction": str(classes[k]), "score": float(p[k]),
                         **{f"p_{c}": float(v) for c, v in zip(classes, p, strict=True)}})
    return rows


def load_classifier(directory: str | os.PathLike, device: str = "auto"):
    """Either kind of trained classifier -> (proba(list of token arrays) -> (n, K) float64,
    classes (K,) str, manifest): a linear one (OUT/model, OUT/kmer) or a fine-tuned network
    (OUT/finetuned)."""
    d = Path(directory)
    man_p = d / "classifier.json"
    if man_p.exists():
        try:
            fmt = json.loads(man_p.read_text()).get("format")
        except (json.JSONDecodeError, AttributeError):
            raise InputError(f"{man_p}: not a JSON object") from None
        if fmt == FORMAT:
            ft, man = FinetunedClassifier.load(d, resolve_device(device))
            return ft.predict_proba, ft.classes, man
    clf, spec, man = LinearClassifier.load(d)
    model = None
    if spec.kind == "embedding":
        model, sha = load_backbone(spec.model_dir, device)
        if spec.checkpoint_sha256 and sha != spec.checkpoint_sha256:
            raise InputError(f"{spec.model_dir}: checkpoint sha256 differs from the one the "
                             f"classifier {directory} was trained on")

    def proba(seqs: Sequence[np.ndarray]) -> np.ndarray:
        return clf.predict_proba(features(spec, seqs, model))  # (n, K)

    return proba, clf.classes, man


def write_predictions(rows: list[dict], path: str | os.PathLike | None) -> str:
    keys = list(rows[0]) if rows else ["file", "record", "prediction"]
    text = "\t".join(keys) + "\n" + "".join(
        "\t".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + "\n"
        for r in rows)
    if path:
        guard_output(path, sorted({str(r["file"]) for r in rows}))
        prepare_output(path)
        with os_errors(path), atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    return text


def evaluate(classifier: str | os.PathLike, labels: str, *, label_column: str = "species",
             group: str | None = None, include: str | None = None,
             label_from_record: str | None = None, window: int | None = None,
             aggregate: str = "mean", device: str = "auto") -> dict:
    """Per-record predictions on a labelled table of (new) files, against their labels."""
    sources = read_labels(labels, label_column=label_column, group=group, include=include,
                          label_from_record=label_from_record)
    files = list(dict.fromkeys(s.file for s in sources))
    rows = predict_files(classifier, files, window=window, aggregate=aggregate, device=device)
    truth = {(s.file, s.record): s.label for s in sources}
    rows = [dict(r, label=truth[(r["file"], r["record"])]) for r in rows
            if (r["file"], r["record"]) in truth]
    classes = [str(c) for c in json.loads((Path(classifier) / "classifier.json").read_text())["labels"]]
    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        log.info(f"labels not seen in training (always counted wrong): {', '.join(unknown)}")
    m = metrics(np.array([r["label"] for r in rows]), np.array([r["prediction"] for r in rows]),
                sorted(set(classes) | set(unknown)))
    return {"rows": rows, "metrics": m}

