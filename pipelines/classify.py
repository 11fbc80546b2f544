"""`mamba-dna classify`: species (or any label) from genome windows, always beside a k-mer bar.

Setup: read a labels table (TSV: a `file` column + label columns; filter by `group`, pick
the label column, or take labels from record names with a regex), open every FASTA and cut
it into *segments*, each assigned to exactly one of train / val / test:

    split_by="record"  whole records go to one split (needs >= 3 records per class)
    split_by="block"   records are cut into blocks (>= the window) dealt to the splits
    split_by="file"    whole files go to test (the hard setting, e.g. unseen strains); the
                       other files give train and val blocks

Windows are drawn only inside one segment, so no window crosses a split boundary (no
leakage), and every class gets the same number of windows in each split (balanced).

Run: features are pooled embeddings from the backbone (`pipelines.embed.embed_sequences`,
the same code as `mamba-dna embed`) and, always, k-mer frequency profiles with k chosen in
`kmer_ks` (3..6) on the val split. One classifier for both: standardisation + multinomial logistic
regression with C cross-validated on train. Test: accuracy, balanced accuracy, per-class
precision/recall, confusion matrices (text + PNG), and accuracy vs window length.
With `finetune` set, the backbone is also fine-tuned end to end with a classification head
(`pipelines.finetune`: last-token head, sequence-length warmup) on windows of the train
segments, and scored on the same test windows: a third, "finetuned", result and column.

Save: a classifier is plain numbers (`classifier.npz`: coef, intercept, classes, scaler
mean/scale) + `classifier.json` (feature spec, model reference and checkpoint sha256, label
set, the npz's sha256). No pickle: loading rebuilds the linear model in numpy and refuses a
npz whose hash does not match its manifest. A fine-tuned classifier is a directory of
safetensors + JSON (see pipelines.finetune); `load_classifier` opens either kind.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mamba_dna import log
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.fsutil import atomic_path, sha256_file, write_json

if TYPE_CHECKING:
    from mamba_dna.pipelines.finetune import FinetuneConfig

SPLITS = ("train", "val", "test")
KMER_KS = (3, 4, 5, 6)  # default k search of the k-mer baseline (ClassifyConfig.kmer_ks=None)


# --------------------------------------------------------------------------- inputs


@dataclass
class Source:
    """One FASTA record with its label."""

    file: str
    record: str
    length: int
    label: str
    unit: str  # what a file split holds out (the file path)


def read_labels(path: str | os.PathLike, *, label_column: str = "species",
                group: str | None = None, include: str | None = None,
                label_from_record: str | None = None) -> list[Source]:
    """Rows of a labels TSV -> one Source per FASTA record (file paths relative to the TSV or
    its parent folder)."""
    from mamba_dna.genome import Genome

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: labels table not found")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise InputError(f"{path}: empty labels table; expected a header line with 'file' and "
                         "label columns")
    cols = list(rows[0])
    for need in ("file", label_column) if not label_from_record else ("file",):
        if need not in cols:
            raise InputError(f"{path}:1: no column {need!r}; columns are {', '.join(cols)}",
                             hint="choose one with --label-column")
    if group is not None and "group" not in cols:
        raise InputError(f"{path}:1: --group given but the table has no 'group' column")
    rx = re.compile(include) if include else None
    pat = re.compile(label_from_record) if label_from_record else None
    if pat is not None and pat.groups != 1:
        raise ConfigError(f"--label-from-record {label_from_record!r}: expected a regex with "
                          "exactly one (group), e.g. '_(DENV[1-4])$'")
    out: list[Source] = []
    for lineno, row in enumerate(rows, 2):
        if group is not None and row["group"] != group:
            continue
        if rx is not None and not (rx.search(row["file"]) or rx.search(row.get(label_column, ""))):
            continue
        # relative paths: beside the table, else one level up (shared/data/species/labels.tsv
        # names files as species/...)
        cands = [(path.parent / row["file"]).resolve(), (path.parent.parent / row["file"]).resolve()]
        fa = next((c for c in cands if c.exists()), cands[0])
        if not fa.exists():
            raise InputError(f"{path}:{lineno}: FASTA {row['file']!r} not found (looked at {fa})")
        g = Genome(fa)
        for name in g.names:
            if pat is not None:
                m = pat.search(name)
                if not m:
                    log.info(f"{row['file']}: record {name} has no label matching "
                             f"{label_from_record!r}; skipped")
                    continue
                label = m.group(1)
            else:
                label = row[label_column]
            out.append(Source(str(fa), name, g.lengths[name], label, str(fa)))
    if not out:
        raise InputError(f"{path}: no rows left after --group {group!r} / --include {include!r}")
    if len({s.label for s in out}) < 2:
        raise InputError(f"{path}: only one class ({out[0].label!r}) after filtering; "
                         "a classifier needs at least two")
    return out


# --------------------------------------------------------------------------- split + windows


@dataclass
class Segment:
    file: str
    record: str
    start: int
    end: int
    label: str
    split: str


def make_segments(sources: Sequence[Source], *, split_by: str, window: int, block: int,
                  fractions: tuple[float, float] = (0.2, 0.2), seed: int = 0) -> list[Segment]:
    """Assign disjoint pieces of every record to train / val / test (see module docstring).

    fractions = (val, test) share of records, blocks or files per class.
    """
    if split_by not in ("record", "block", "file"):
        raise ConfigError(f"--split-by {split_by!r}: expected record, block or file")
    rng = np.random.default_rng(seed)
    block = max(block, window)
    segs: list[Segment] = []

    def deal(n: int, rng=rng) -> list[str]:
        """n units -> split names, at least one val and one test unit when n >= 3."""
        n_val = max(1, round(n * fractions[0])) if n >= 3 else 0
        n_test = max(1, round(n * fractions[1])) if n >= 2 else 0
        names = ["val"] * n_val + ["test"] * n_test
        names += ["train"] * (n - len(names))
        return list(rng.permutation(names))

    def blocks_of(s: Source, splits_allowed: Sequence[str] | None) -> None:
        nb = s.length // block
        if nb == 0:
            return
        edges = np.linspace(0, s.length, nb + 1).astype(int)
        # The pattern depends only on (seed, number of blocks), not on the record: homologous
        # genomes of equal length (e.g. three ebolavirus species) hold out the same regions,
        # so a test window is never classified by the same region seen in another class.
        prng = np.random.default_rng([seed, nb])
        if splits_allowed is None:
            names = deal(nb, prng)
        else:
            n_val = max(1, round(nb * fractions[0])) if nb >= 2 else 0
            names = list(prng.permutation(["val"] * n_val + ["train"] * (nb - n_val)))
        for b in range(nb):
            segs.append(Segment(s.file, s.record, int(edges[b]), int(edges[b + 1]), s.label, names[b]))

    labels = sorted({s.label for s in sources})
    for lab in labels:
        mine = [s for s in sources if s.label == lab]
        if split_by == "record":
            for s, sp in zip(mine, deal(len(mine)), strict=True):
                segs.append(Segment(s.file, s.record, 0, s.length, lab, sp))
        elif split_by == "block":
            for s in mine:
                blocks_of(s, None)
        else:  # file: whole files to test, the rest cut into train/val blocks
            units = sorted({s.unit for s in mine})
            if len(units) < 2:
                raise InputError(f"class {lab!r} has a single file ({Path(units[0]).name}); "
                                 "--split-by file needs >= 2 files per class",
                                 hint="use --split-by block")
            n_test = max(1, round(len(units) * fractions[1]))
            test_units = set(rng.permutation(units)[:n_test].tolist())
            for s in mine:
                if s.unit in test_units:
                    segs.append(Segment(s.file, s.record, 0, s.length, lab, "test"))
                else:
                    blocks_of(s, ("train", "val"))
    return segs


@dataclass
class Windows:
    """Sampled windows: coordinates, labels and the segment each came from."""

    file: list[str]
    record: list[str]
    start: np.ndarray  # (n,) int64
    label: np.ndarray  # (n,) object
    segment: np.ndarray  # (n,) int64 index into the segment list
    window: int

    def __len__(self) -> int:
        return len(self.file)


def sample_windows(segs: Sequence[Segment], split: str, window: int, per_class: int,
                   seed: int = 0) -> Windows | None:
    """`per_class` windows of one split per class, uniform over the usable positions of the
    split's segments. None when some class has no segment that fits the window."""
    rng = np.random.default_rng([seed, window, SPLITS.index(split)])
    idx = [i for i, s in enumerate(segs) if s.split == split and s.end - s.start >= window]
    labels = sorted({s.label for s in segs})
    file, record, start, lab, seg = [], [], [], [], []
    for la in labels:
        mine = [i for i in idx if segs[i].label == la]
        if not mine:
            return None
        room = np.array([segs[i].end - segs[i].start - window + 1 for i in mine], dtype=np.float64)
        pick = rng.choice(len(mine), size=per_class, p=room / room.sum())
        for j in pick:
            s = segs[mine[j]]
            st = s.start + int(rng.integers(0, s.end - s.start - window + 1))
            file.append(s.file), record.append(s.record), start.append(st)
            lab.append(la), seg.append(mine[j])
    return Windows(file, record, np.array(start, np.int64), np.array(lab, object),
                   np.array(seg, np.int64), window)


class _GenomeCache:
    def __init__(self):
        self._g: dict[str, object] = {}

    def tokens(self, file: str, record: str, start: int, end: int) -> np.ndarray:
        from mamba_dna.genome import Genome

        if file not in self._g:
            self._g[file] = Genome(file, invalid="N")
        return self._g[file].tokens(record, start, end)[0]  # (L,) uint8


# --------------------------------------------------------------------------- features


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


# --------------------------------------------------------------------------- metrics + report


def metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    classes = list(classes)
    p, r, _, n = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "n": int(n[i])}
                      for i, c in enumerate(classes)},
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "classes": classes,
    }


def confusion_text(m: dict) -> str:
    classes = m["classes"]
    w = max(8, *(len(c) for c in classes))
    lines = ["true \\ predicted".ljust(w) + "  " + "  ".join(c[:w].rjust(w) for c in classes)]
    for c, row in zip(classes, m["confusion"], strict=True):
        lines.append(c[:w].ljust(w) + "  " + "  ".join(str(v).rjust(w) for v in row))
    return "\n".join(lines)


def confusion_png(m: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(m["confusion"])
    k = len(m["classes"])
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * k, 1.0 + 0.8 * k))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), m["classes"], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), m["classes"], fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nacc {m['accuracy']:.3f}, balanced {m['balanced_accuracy']:.3f}",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the job


@dataclass
class ClassifyConfig:
    labels: str
    out: str
    model: str | None = None  # None: the k-mer baseline only
    label_column: str = "species"
    group: str | None = None
    include: str | None = None
    label_from_record: str | None = None
    window: int = 4096
    split_by: str = "block"
    block: int = 0  # block size for block/file splits [default: window]
    per_class: int = 64  # train windows per class; val and test get half each
    bp_per_class: int = 1 << 21  # cap on bp per class and split in the length table
    lengths: tuple[int, ...] | None = None  # accuracy-vs-window-length table [2^10 ...]
    max_length: int = 1 << 20
    pool: str = "mean"
    layer: int | None = None
    rc_average: bool = False
    seed: int = 0
    device: str = "auto"
    kmer_ks: tuple[int, ...] | None = None  # k search of the k-mer baseline [KMER_KS: 3..6]
    finetune: FinetuneConfig | None = None  # also fine-tune the backbone end to end

    def check(self) -> None:
        if self.window < 16 or self.window > 1 << 20:
            raise ConfigError(f"--window {self.window}: expected 16 .. 1048576 bp")
        if self.kmer_ks is not None and (not self.kmer_ks or any(
                not isinstance(k, int) or not 1 <= k <= 8 for k in self.kmer_ks)):
            raise ConfigError(f"--kmer-ks {self.kmer_ks}: expected one or more k in 1..8, "
                              "e.g. 3,4,5,6")
        if self.finetune is not None:
            if not self.model:
                raise ConfigError("--finetune needs --model (the pretrained backbone to tune)")
            self.finetune.check()
        if self.pool not in ("mean", "last", "max"):
            raise ConfigError(f"--pool {self.pool!r}: expected mean, last or max")
        if self.per_class < 4:
            raise ConfigError(f"--per-class {self.per_class}: expected >= 4")


def _draw(segs, window, per_class, bp_per_class, seed):
    n_tr = max(4, min(per_class, bp_per_class // window))
    n_ev = max(2, n_tr // 2)
    w = {sp: sample_windows(segs, sp, window, n_tr if sp == "train" else n_ev, seed)
         for sp in SPLITS}
    return None if any(v is None for v in w.values()) else w


def _tokens(cache, w: Windows) -> list[np.ndarray]:
    return [cache.tokens(f, r, int(s), int(s) + w.window)
            for f, r, s in zip(w.file, w.record, w.start, strict=True)]


def fit_eval(windows: dict, cache, model, model_spec: FeatureSpec | None, seed: int = 0,
             kmer_ks: Sequence[int] | None = None) -> dict:
    """Fit the k-mer baseline (k in `kmer_ks` [KMER_KS] picked on val) and the model on
    train; predict test."""
    toks = {sp: _tokens(cache, w) for sp, w in windows.items()}
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


def run_train(cfg: ClassifyConfig) -> dict:
    """Train + evaluate (model and k-mer baseline); write everything under cfg.out."""
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = read_labels(cfg.labels, label_column=cfg.label_column, group=cfg.group,
                          include=cfg.include, label_from_record=cfg.label_from_record)
    classes = sorted({s.label for s in sources})
    log.info(f"{len(sources)} records, {len(classes)} classes: {', '.join(classes)}")
    segs = make_segments(sources, split_by=cfg.split_by, window=cfg.window,
                         block=cfg.block or cfg.window, seed=cfg.seed)
    _write_segments(out / "split.tsv", segs)

    model, model_spec = None, None
    if cfg.model:
        from mamba_dna.device import resolve_device
        from mamba_dna.load import checkpoint_sha256, load_model

        model = load_model(cfg.model, map_location=resolve_device(cfg.device))
        sha = checkpoint_sha256(cfg.model)
        model_spec = FeatureSpec("embedding", pool=cfg.pool, layer=cfg.layer,
                                 rc_average=cfg.rc_average, model_dir=str(cfg.model),
                                 checkpoint_sha256=sha, model_config=model.config.to_dict())
    cache = _GenomeCache()

    # main window length: classifiers saved + full report
    wins = _draw(segs, cfg.window, cfg.per_class, 1 << 62, cfg.seed)
    if wins is None:
        raise InputError(f"window {cfg.window} bp: some class has no {cfg.split_by} segment "
                         "that long in every split (train, val, test)",
                         hint="use a shorter --window, or --split-by block with a smaller --block")
    log.info(f"window {cfg.window}: " + ", ".join(f"{sp} {len(w)}" for sp, w in wins.items())
             + f" windows ({cfg.split_by} split, balanced)")
    res = fit_eval(wins, cache, model, model_spec, cfg.seed, cfg.kmer_ks)
    if cfg.finetune is not None:
        res["finetuned"] = _finetuned(cfg, segs, wins, cache)
    extra = {"window": cfg.window, "labels_table": str(cfg.labels), "label_column":
             cfg.label_column if not cfg.label_from_record else f"record ~ {cfg.label_from_record}",
             "group": cfg.group, "split_by": cfg.split_by}
    report = {"config": asdict(cfg), "classes": classes, "results": {}}
    for name, r in res.items():
        extra_n = {**extra, "test_metrics": r["metrics"], "val_accuracy": r["val_accuracy"]}
        r["clf"].save(out / name, r["spec"], extra_n)
        confusion_png(r["metrics"], out / f"confusion_{name}.png",
                      f"{r['spec'].name} ({cfg.window} bp windows)")
        report["results"][name] = {"features": r["spec"].name, **r["metrics"]}

    # accuracy vs window length
    lengths = cfg.lengths or tuple(2**p for p in range(10, 21))
    table = []
    for L in lengths:
        if L > cfg.max_length:
            break
        # blocks at least as long as the window: the split is redrawn for each length
        segs_L = segs if L <= (cfg.block or cfg.window) else make_segments(
            sources, split_by=cfg.split_by, window=L, block=L, seed=cfg.seed)
        w = _draw(segs_L, L, cfg.per_class, cfg.bp_per_class, cfg.seed) if L != cfg.window else wins
        if w is None:
            log.info(f"window {L}: genomes too short for disjoint train/val/test windows; stop")
            break
        r = res if L == cfg.window else fit_eval(w, cache, model, model_spec, cfg.seed,
                                                 cfg.kmer_ks)
        if cfg.finetune is not None and cfg.finetune.table and L != cfg.window:
            r["finetuned"] = _finetuned(cfg, segs_L, w, cache)
        row = {"window": L, "n_train_per_class": len(w["train"]) // len(classes),
               "n_test_per_class": len(w["test"]) // len(classes)}
        for name in ("model", "finetuned", "kmer"):
            if name in r:
                row[f"{name}_accuracy"] = r[name]["metrics"]["accuracy"]
                row[f"{name}_balanced_accuracy"] = r[name]["metrics"]["balanced_accuracy"]
                row[f"{name}_seconds"] = round(r[name]["seconds"], 1)
        row["kmer_k"] = r["kmer"]["spec"].k
        table.append(row)
        log.info(f"window {L}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in row.items() if k != "window"))
    report["length_table"] = table
    _write_table(out / "accuracy_vs_length.tsv", table)
    write_json(out / "report.json", report)
    text = format_report(report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(text)
    return report


def _finetuned(cfg: ClassifyConfig, segs, windows: dict, cache) -> dict:
    from mamba_dna.pipelines.finetune import fit_eval_finetuned

    return fit_eval_finetuned(cfg.model, segs, windows, cache, cfg.finetune,
                              rc_average=cfg.rc_average, device=cfg.device)


def _write_segments(path: Path, segs: Sequence[Segment]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write("file\trecord\tstart\tend\tlabel\tsplit\n")
        for s in segs:
            fh.write(f"{Path(s.file).name}\t{s.record}\t{s.start}\t{s.end}\t{s.label}\t{s.split}\n")


def _write_table(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(keys) + "\n")
        for r in rows:
            fh.write("\t".join(f"{r[k]:.4f}" if isinstance(r.get(k), float) else str(r.get(k, ""))
                               for k in keys) + "\n")


def format_report(report: dict) -> str:
    c = report["config"]
    lines = [f"# classify: {c['labels']} ({c.get('group') or 'all groups'}; label "
             f"{c.get('label_from_record') or c['label_column']})", "",
             f"window {c['window']} bp, split by {c['split_by']}, classes: "
             f"{', '.join(report['classes'])}", ""]
    lines += ["| features | accuracy | balanced accuracy | n test |", "|---|---|---|---|"]
    for r in report["results"].values():
        lines.append(f"| {r['features']} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} "
                     f"| {r['n']} |")
    for r in report["results"].values():
        lines += ["", f"## {r['features']}: per class", "", "| class | precision | recall | n |",
                  "|---|---|---|---|"]
        for cl, v in r["per_class"].items():
            lines.append(f"| {cl} | {v['precision']:.3f} | {v['recall']:.3f} | {v['n']} |")
        lines += ["", "```", confusion_text(r), "```"]
    t = report.get("length_table") or []
    if t:
        keys = [k for k in t[0] if k != "window"]
        lines += ["", "## accuracy vs window length", "", "| window | " + " | ".join(keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for row in t:
            lines.append(f"| {row['window']} | " + " | ".join(
                f"{row[k]:.3f}" if isinstance(row.get(k), float) else str(row.get(k, ""))
                for k in keys) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- predict / evaluate


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
        from mamba_dna.pipelines.finetune import FORMAT

        if fmt == FORMAT:
            from mamba_dna.pipelines.finetune import FinetunedClassifier

            from mamba_dna.device import resolve_device

            ft, man = FinetunedClassifier.load(d, resolve_device(device))
            return ft.predict_proba, ft.classes, man
    clf, spec, man = LinearClassifier.load(d)
    model = None
    if spec.kind == "embedding":
        from mamba_dna.device import resolve_device
        from mamba_dna.load import checkpoint_sha256, load_model

        model = load_model(spec.model_dir, map_location=resolve_device(device))
        sha = checkpoint_sha256(spec.model_dir)
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
        with atomic_path(path) as tmp:
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

