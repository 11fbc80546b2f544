"""curves.png: training and validation bits per base over tokens, beside the baseline: the
best Markov model (clm) or the two-sided k-mer model at the same masked positions (mlm)."""

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
    mlm = bool(baseline and baseline.get("kind") == "kmer2") or any(r.get("objective") == "mlm" for r in va)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if tr:
        ax.plot([r["tokens"] for r in tr], [r["bits_per_base"] for r in tr], lw=1, alpha=0.7,
                label="train (masked positions, CE over the full vocabulary)" if mlm
                else "train (cross-entropy over the full vocabulary)")
    if va:
        ax.plot([r["tokens"] for r in va], [r["bits_per_base"] for r in va], "o-", lw=1.5,
                label="validation masked bits/base (A/C/G/T softmax)" if mlm
                else "validation (A/C/G/T renormalised)")
    bar = None
    if baseline and mlm:
        bar = baseline["masked_bits_per_base"]
        ax.axhline(bar, color="k", ls="--", lw=1,
                   label=f"two-sided k-mer (k={baseline['k']}), same masked positions")
    elif baseline:
        bar = baseline["bits_per_base"]
        ax.axhline(bar, color="k", ls="--", lw=1,
                   label=f"best Markov (order {baseline['order']}), validation")
    ax.axhline(2.0, color="grey", ls=":", lw=1, label="uniform (2 bits)")
    shown = [r["bits_per_base"] for r in va] + ([bar] if bar is not None else [])
    if shown:  # the first training steps (~3 bits) would flatten the interesting range
        ax.set_ylim(min(shown) - 0.05, max(2.1, max(shown) + 0.05))
    ax.set_xlabel("training tokens")
    ax.set_ylabel("bits per base")
    ax.set_title("mamba-dna pretrain (masked LM)" if mlm else "mamba-dna pretrain")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(run_dir) / "curves.png"
    save_figure(fig, png)
    return png
