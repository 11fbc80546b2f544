"""curves.png: training and validation bits per base over tokens, beside the Markov bar."""

from __future__ import annotations

from pathlib import Path

from mamba_dna.figures import pyplot, save_figure

from .rundir import read_metrics


def plot_curves(run_dir: Path, baseline: dict | None) -> Path:
    """RUN/curves.png from RUN/metrics.jsonl."""
    plt = pyplot()
    rows = read_metrics(run_dir)
    tr = [r for r in rows if r.get("split") == "train"]
    va = [r for r in rows if r.get("split") == "val"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if tr:
        ax.plot([r["tokens"] for r in tr], [r["bits_per_base"] for r in tr], lw=1, alpha=0.7,
                label="train (cross-entropy over the full vocabulary)")
    if va:
        ax.plot([r["tokens"] for r in va], [r["bits_per_base"] for r in va], "o-", lw=1.5,
                label="validation (A/C/G/T renormalised)")
    if baseline:
        ax.axhline(baseline["bits_per_base"], color="k", ls="--", lw=1,
                   label=f"best Markov (order {baseline['order']}), validation")
    ax.axhline(2.0, color="grey", ls=":", lw=1, label="uniform (2 bits)")
    shown = [r["bits_per_base"] for r in va] + ([baseline["bits_per_base"]] if baseline else [])
    if shown:  # the first training steps (~3 bits) would flatten the interesting range
        ax.set_ylim(min(shown) - 0.05, max(2.1, max(shown) + 0.05))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("bits per base")
    ax.set_title("mamba-dna pretrain")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(run_dir) / "curves.png"
    save_figure(fig, png)
    return png
