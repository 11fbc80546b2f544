"""The linear probe and the k-mer bar: a window -> features (pooled embeddings or k-mer
profiles) -> standardise + logistic regression, stored as plain numbers (no pickle)."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mamba_dna.errors import InputError
from mamba_dna.fsutil import atomic_path, sha256_file, write_json

from .config import KMER_KS, SPLITS
from .data import window_tokens
from .report import metrics


@dataclass
class FeatureSpec:
    """How a window becomes a feature vector (stored in classifier.json)."""

    kind: str  # "embedding" | "kmer"
    k: int = 0
    pool: str = "mean"
    layer: int | None = None
    rc_average: bool = False
    model_dir: str = ""
    checkpoint_sha256: str = ""
    model_config: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"kmer-{self.k}" if self.kind == "kmer" else "model"


def load_backbone(model_dir: str | os.PathLike, device: str = "auto"):
    """(model in eval mode, its checkpoint sha256): the one place the probe loads a model."""
    from mamba_dna.device import resolve_device
    from mamba_dna.load import checkpoint_sha256, load_model

    return load_model(model_dir, map_location=resolve_device(device)), checkpoint_sha256(model_dir)


def features(spec: FeatureSpec, seqs: Sequence[np.ndarray], model=None) -> np.ndarray:
    """(n, features) float32 for token arrays."""
    if spec.kind == "kmer":
        from mamba_dna.baselines import kmer_profile

        return np.stack([kmer_profile(s, spec.k, both_strands=True) for s in seqs])  # (n, 4**k)
    from mamba_dna.pipelines.embed import embed_sequences

    return embed_sequences(model, list(seqs), pool=spec.pool, layer=spec.layer,
                           rc_average=spec.rc_average)  # (n, d)


# --------------------------------------------------------------------------- classifier


@dataclass
class LinearClassifier:
    """Standardise, then multinomial (or binary) logistic regression; numbers only."""

    classes: np.ndarray  # (K,) str
    coef: np.ndarray  # (K or 1, F)
    intercept: np.ndarray  # (K or 1,)
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    C: float = 1.0

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
            seed: int = 0, cv: bool = True) -> LinearClassifier:
        """C picked by (group) k-fold cross-validation on the training rows; cv=False: C=1."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import GroupKFold, StratifiedKFold

        mean = X.mean(0)
        scale = X.std(0)
        scale[scale < 1e-8] = 1.0
        Z = (X - mean) / scale  # (n, F)
        n_min = min(np.unique(y, return_counts=True)[1])
        folds = int(min(3, n_min)) if cv else 0
        if folds >= 2:
            if groups is not None and len(np.unique(groups)) >= folds * 2:
                cv = list(GroupKFold(n_splits=folds).split(Z, y, groups))
                if any(len(np.unique(y[tr])) < len(np.unique(y)) for tr, _ in cv):
                    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            else:
                cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
            clf = LogisticRegressionCV(Cs=np.logspace(-3, 1, 5).tolist(), cv=cv, max_iter=500,
                                       scoring="accuracy")
            with warnings.catch_warnings():  # sklearn 1.8+ API-transition FutureWarnings, and
                warnings.simplefilter("ignore", FutureWarning)  # iteration caps on separable
                warnings.simplefilter("ignore", ConvergenceWarning)  # data (large C)
                clf.fit(Z, y)
            C = float(np.atleast_1d(clf.C_)[0])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LogisticRegression(C=1.0, max_iter=500).fit(Z, y)
            C = 1.0
        return cls(np.asarray(clf.classes_).astype(str), clf.coef_.astype(np.float64),
                   clf.intercept_.astype(np.float64), mean.astype(np.float64),
                   scale.astype(np.float64), C)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        Z = (X - self.mean) / self.scale  # (n, F)
        logits = Z @ self.coef.T + self.intercept  # (n, K) or (n, 1)
        if self.coef.shape[0] == 1:  # binary: sklearn's coef is for classes[1]
            p1 = 1 / (1 + np.exp(-logits[:, 0]))
            return np.stack([1 - p1, p1], 1)
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(1, keepdims=True)  # (n, K)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes[np.argmax(self.predict_proba(X), 1)]

    def save(self, directory: Path, spec: FeatureSpec, extra: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        npz = directory / "classifier.npz"
        with atomic_path(npz, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, classes=self.classes.astype("U"), coef=self.coef,
                         intercept=self.intercept, mean=self.mean, scale=self.scale)
        manifest = {
            "format": "mamba-dna-classifier", "format_version": 1,
            "classifier": "standardise + logistic regression (multinomial; binary for 2 classes)",
            "C": self.C, "labels": self.classes.tolist(), "features": asdict(spec),
            "npz_sha256": sha256_file(npz), **extra,
        }
        write_json(directory / "classifier.json", manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> tuple[LinearClassifier, FeatureSpec, dict]:
        d = Path(directory)
        man_p, npz = d / "classifier.json", d / "classifier.npz"
        if not man_p.exists() or not npz.exists():
            raise InputError(f"{d}: not a classifier directory (expected classifier.json + "
                             "classifier.npz from `mamba-dna classify train`)")
        man = json.loads(man_p.read_text())
        if man.get("format") != "mamba-dna-classifier":
            raise InputError(f"{man_p}: format {man.get('format')!r} is not mamba-dna-classifier")
        if sha256_file(npz) != man.get("npz_sha256"):
            raise InputError(f"{npz}: sha256 does not match {man_p.name}; refusing to load it",
                             hint="the file was changed after training; train again")
        with np.load(npz, allow_pickle=False) as z:
            clf = cls(z["classes"].astype(str), z["coef"], z["intercept"], z["mean"], z["scale"],
                      float(man.get("C", 1.0)))
        return clf, FeatureSpec(**man["features"]), man


# --------------------------------------------------------------------------- fit + test


def fit_eval(windows: dict, cache, model, model_spec: FeatureSpec | None, seed: int = 0,
             kmer_ks: Sequence[int] | None = None) -> dict:
    """Fit the k-mer baseline (k in `kmer_ks` [KMER_KS] picked on val) and the model on
    train; predict test."""
    toks = {sp: window_tokens(cache, w) for sp, w in windows.items()}
    y = {sp: windows[sp].label.astype(str) for sp in SPLITS}
    groups = windows["train"].segment
    res = {}
    best = None
    t0 = time.perf_counter()
    for k in kmer_ks or KMER_KS:  # k on val with C=1 (cheap), then C cross-validated for that k
        spec = FeatureSpec("kmer", k=k)
        clf = LinearClassifier.fit(features(spec, toks["train"]), y["train"], cv=False)
        val_acc = float(np.mean(clf.predict(features(spec, toks["val"])) == y["val"]))
        if best is None or val_acc > best[0]:
            best = (val_acc, spec)
    spec = best[1]
    clf = LinearClassifier.fit(features(spec, toks["train"]), y["train"], groups, seed)
    pred = clf.predict(features(spec, toks["test"]))
    res["kmer"] = {"spec": spec, "clf": clf, "pred": pred,
                   "metrics": metrics(y["test"], pred, clf.classes), "val_accuracy": best[0],
                   "seconds": time.perf_counter() - t0}
    if model is not None:
        t0 = time.perf_counter()
        Xtr = features(model_spec, toks["train"], model)
        clf = LinearClassifier.fit(Xtr, y["train"], groups, seed)
        Xva = features(model_spec, toks["val"], model)
        pred = clf.predict(features(model_spec, toks["test"], model))
        res["model"] = {"spec": model_spec, "clf": clf, "pred": pred,
                        "metrics": metrics(y["test"], pred, clf.classes),
                        "val_accuracy": float(np.mean(clf.predict(Xva) == y["val"])),
                        "seconds": time.perf_counter() - t0}
    return res

