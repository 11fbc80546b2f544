"""The demo's figures: score distributions, the embedding PCA, accuracy vs window length."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mamba_dna.figures import pyplot, save_figure

from .config import FITNESS_BAD, FITNESS_OK


def plot_scores(results: list[dict], path: Path) -> None:
    plt = pyplot()
    keys = list(results[0]["scorers"])
    fig, axes = plt.subplots(len(results), len(keys), figsize=(4.2 * len(keys), 3.2 * len(results)),
                             squeeze=False)
    for i, r in enumerate(results):
        for j, k in enumerate(keys):
            ax, v = axes[i][j], r["scorers"][k]
            llr, y = v["_llr"], v["_y"]
            if r["metric"] == "spearman":
                groups = [(f"FITNESS < {FITNESS_BAD:g}", y < FITNESS_BAD),
                          (f"FITNESS > {FITNESS_OK:g}", y > FITNESS_OK)]
                title = f"rho {v['value']:.3f}"
            else:
                groups = [("pathogenic (Y=1)", y == 1), ("common (Y=0)", y == 0)]
                title = f"AUROC {v['value']:.3f}"
            ok = np.isfinite(llr)
            lo, hi = (np.percentile(llr[ok], [0.5, 99.5]) if ok.any() else (-1.0, 1.0))
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
            for lab, m in groups:
                m = m & ok
                if m.any():
                    ax.hist(np.clip(llr[m], lo, hi), bins=bins, density=True, alpha=0.55,
                            label=f"{lab} (n={int(m.sum()):,})")
            ax.set_title(f"{r['set']}\n{v['name']}: {title}", fontsize=8)
            ax.set_xlabel("LLR = log P(alt) - log P(ref)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _pca2(X: np.ndarray) -> np.ndarray:
    Z = (X - X.mean(0)) / (X.std(0) + 1e-8)  # (n, d)
    U, S, _ = np.linalg.svd(Z, full_matrices=False)
    return U[:, :2] * S[:2]  # (n, 2)


def plot_lengths(table: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    L = [r["window"] for r in table]
    for key, lab in (("model_accuracy", "Mamba embeddings"), ("kmer_accuracy", "k-mer profile")):
        ys = [r.get(key) for r in table]
        if any(v is not None for v in ys):
            ax.plot(L, ys, "o-", label=lab)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("window length (bp)")
    ax.set_ylabel("test accuracy (held-out genomes)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("dengue serotype from one window", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)



def plot_embeddings(X: np.ndarray, K: np.ndarray, y: np.ndarray, acc_model: float, acc_kmer: float,
                    title: str, path: Path) -> None:
    """PCA of the model's embeddings beside the k-mer profiles', coloured by label."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, M, sub in ((axes[0], X, f"Mamba embeddings (d={X.shape[1]}): LOO 1-NN {acc_model:.3f}"),
                       (axes[1], K, f"4-mer profiles: LOO 1-NN {acc_kmer:.3f}")):
        P = _pca2(M)
        for lab in sorted(set(y)):
            m = y == lab
            ax.scatter(P[m, 0], P[m, 1], s=18, label=f"{lab} ({int(m.sum())})")
        ax.set_title(sub, fontsize=9)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
