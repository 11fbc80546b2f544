"""Metrics, confusion matrices (text + PNG), the accuracy-vs-length table and report.md."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mamba_dna.figures import pyplot, save_figure
from mamba_dna.fsutil import atomic_path

from .data import Segment


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
    plt = pyplot()
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
    save_figure(fig, path)


def write_segments(path: Path, segs: Sequence[Segment]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write("file\trecord\tstart\tend\tlabel\tsplit\n")
        for s in segs:
            fh.write(f"{Path(s.file).name}\t{s.record}\t{s.start}\t{s.end}\t{s.label}\t{s.split}\n")


def write_table(path: Path, rows: list[dict]) -> None:
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

