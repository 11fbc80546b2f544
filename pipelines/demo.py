"""`mamba-dna demo`: the whole system on real genomes, on a laptop CPU, in minutes.

The recipe reads top to bottom; every figure is printed beside its baseline:

    data      find the shared data: --data, $MAMBA_DNA_DATA, ../shared/data beside the
              checkout or the working directory; otherwise say how to download it
    tokenize  virus genomes (one reference per species, no dengue) and three
              mitochondrial genomes -> shards; 10% of position blocks held out for
              validation, 10% for test (regions, not records)
    pretrain  a small Mamba LM for a fixed wall-clock budget (steps calibrated on this
              machine) or a fixed number of steps; validation bits per base beside the
              best k-mer Markov model on the same held-out windows
    score     zero-shot LLR (the streaming fast path) of 87,885 SARS-CoV-2 SNVs
              (Spearman vs fitness) and 437 human mtDNA SNVs (AUROC pathogenic vs
              common), beside Markov models fitted on the same corpus and on the reference
    embed     the 54 dengue genomes (unseen in pretraining) -> HDF5 (mean-pooled); record-level
              leave-one-out serotype accuracy and a PCA plot, beside k-mer profiles
    classify  dengue serotypes 1-4 from windows of held-out genomes (`classify train`):
              embeddings vs the k-mer baseline, confusion matrices, accuracy vs length
    report    OUT/report.md with the tables and plots; headline figures on stdout

Nothing is tuned to look good: a few CPU minutes of pretraining give a small model, and
the report says what each baseline got beside it. `quick=True` is the same story at a
toy scale (< 1 minute): it checks the plumbing, its figures mean little.

Output directory (re-running replaces it piece by piece; every file is written atomically):
    config.json    this DemoConfig (+ the resolved preset and the data folder)
    shards/        tokenize output          pretrain/   the pretrain run (model/ inside)
    score/         scored TSVs + plots      embed/      dengue.h5 + PCA plot
    classify/      classifiers, confusion matrices, accuracy vs length
    summary.json   every headline figure    report.md   the report
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from mamba_dna import __version__, log
from mamba_dna.errors import ConfigError, InputError, MambaDNAError
from mamba_dna.fsutil import atomic_dir, atomic_path, write_json

# Files the demo reads, relative to the data folder (layout of ../shared/data).
SARS2_REF = "variants/sarscov2_ntfitness/MN908947_wuhan-hu-1.fasta"
SARS2_VCF = "variants/sarscov2_ntfitness/ntmut_fitness.vcf.gz"
MT_REF = "variants/human_mt_mitomap/rCRS_MT.fasta"
MT_VCF = "variants/human_mt_mitomap/mt_labeled_pathogenic_vs_common.vcf.gz"
DENGUE = "species/virus/dengue_all_sequences.fna.gz"
REQUIRED = (SARS2_REF, SARS2_VCF, MT_REF, MT_VCF, DENGUE)
# Pretraining corpus: one reference genome per virus species + three mitochondrial genomes.
# Near-copies are left out (the mpox clade IIb reference, the hMPV/mpox example genomes): a
# held-out region whose copy is in training measures memorisation, which a high-order Markov
# model does best. No dengue genome either (the reconstructed root is not a real isolate):
# the serotype tasks embed a virus the model has never seen.
CORPUS_GLOBS = ("species/virus/*reference*.fna.gz", "species/mito/*.fna.gz")
CORPUS_EXCLUDE = ("dengue", "mpox_clade-iib")
SEROTYPE_RE = r"_(DENV[1-4])$"
FITNESS_BAD, FITNESS_OK = -3.0, -0.5  # Bloom & Neher: clearly deleterious vs tolerated
LN2 = math.log(2.0)
OUTPUTS = ("report.md", "summary.json", "shards", "pretrain", "score", "embed", "classify")


# --------------------------------------------------------------------------- config


@dataclass
class Preset:
    """The scale of a demo run (full or quick); saved in config.json."""

    d_model: int
    n_layer: int
    seq_len: int
    batch_size: int
    minutes: float | None  # default pretraining budget (None: use `steps`)
    steps: int | None  # default fixed steps (quick)
    min_steps: int
    lr: float
    eval_windows: int
    n_evals: int  # validation passes over the run (the curve's points)
    markov_orders: list[int]
    score_region_bp: int | None  # quick: score only the first bases of SARS-CoV-2
    embed_bp: int | None  # quick: embed only the first bases of each genome (BED)
    classify_window: int
    classify_lengths: list[int]
    per_class: int
    bp_per_class: int
    kmer_ks: list[int] | None = None  # k-mer baseline's k search (None: classify's 3..6)


FULL = Preset(d_model=128, n_layer=2, seq_len=1024, batch_size=8, minutes=4.0, steps=None,
              min_steps=10, lr=3e-3, eval_windows=32, n_evals=6,
              markov_orders=list(range(0, 11)), score_region_bp=None, embed_bp=None,
              classify_window=2048, classify_lengths=[512, 2048, 8192],
              per_class=16, bp_per_class=1 << 15)
QUICK = Preset(d_model=32, n_layer=1, seq_len=256, batch_size=4, minutes=None, steps=8,
               min_steps=2, lr=3e-3, eval_windows=4, n_evals=2,
               markov_orders=list(range(0, 7)), score_region_bp=2000, embed_bp=512,
               classify_window=256, classify_lengths=[256], per_class=8,
               bp_per_class=1 << 12, kmer_ks=[3, 4])


@dataclass
class DemoConfig:
    """Options of `mamba-dna demo` (saved as OUT/config.json with the resolved preset)."""

    out: str = "runs/demo"
    data: str | None = None  # None: $MAMBA_DNA_DATA, then ../shared/data
    quick: bool = False
    minutes: float | None = None  # pretraining budget (training + validation passes)
    steps: int | None = None  # fixed pretraining steps instead of a budget
    device: str = "auto"
    seed: int = 0
    preset: Preset | None = field(default=None)  # None: FULL or QUICK from `quick`

    def resolved(self) -> DemoConfig:
        if self.minutes is not None and self.steps is not None:
            raise ConfigError("demo: give --minutes or --steps, not both")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"--minutes {self.minutes}: expected a positive number")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps {self.steps}: expected >= 1")
        p = self.preset or (QUICK if self.quick else FULL)
        return replace(self, preset=p)


# --------------------------------------------------------------------------- data


def _candidates(explicit: str | None) -> list[tuple[Path, str]]:
    if explicit:
        return [(Path(explicit).expanduser(), "--data")]
    out = []
    env = os.environ.get("MAMBA_DNA_DATA")
    if env:
        out.append((Path(env).expanduser(), "$MAMBA_DNA_DATA"))
    repo = Path(__file__).resolve().parents[1]
    out.append((repo.parent / "shared" / "data", "beside the checkout"))
    out.append((Path.cwd().parent / "shared" / "data", "beside the working directory"))
    return out


def find_data(explicit: str | None = None) -> Path:
    """The data folder: --data, $MAMBA_DNA_DATA, ../shared/data (repository, then cwd)."""
    looked = []
    for path, why in _candidates(explicit):
        if not path.is_dir():
            looked.append(f"{path} ({why}: absent)")
            continue
        missing = [r for r in REQUIRED if not (path / r).is_file()]
        if not missing:
            return path.resolve()
        looked.append(f"{path} ({why}: lacks {', '.join(missing)})")
    fetch = Path(__file__).resolve().parents[1] / "data" / "fetch.py"
    raise InputError(
        "demo: no data folder with the demo's files; looked at " + "; ".join(looked),
        hint=f"download the public records (checksummed) with `python {fetch} fetch "
             "~/mamba-dna-data`, then `mamba-dna demo --data ~/mamba-dna-data` "
             "(or export MAMBA_DNA_DATA=~/mamba-dna-data)",
    )


def corpus_files(data: Path) -> list[Path]:
    files: list[Path] = []
    for pat in CORPUS_GLOBS:
        for p in sorted(data.glob(pat)):
            if p.is_file() and p not in files and not any(x in p.name for x in CORPUS_EXCLUDE):
                files.append(p)
    return files


# --------------------------------------------------------------------------- helpers


class _Stages:
    """Wall-clock and CPU seconds per stage (CPU: all threads of this process; on a shared
    machine wall time depends on the load, CPU time much less)."""

    def __init__(self):
        self.t0, self.c0 = time.time(), time.process_time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.n = 0

    def start(self, name: str, what: str) -> tuple[float, float]:
        self.n += 1
        log.info(f"[{self.n}/6] {name}: {what}")
        return time.time(), time.process_time()

    def done(self, name: str, t: tuple[float, float]) -> None:
        self.seconds[name] = round(time.time() - t[0], 1)
        self.cpu_seconds[name] = round(time.process_time() - t[1], 1)
        log.info(f"{name}: done in {self.seconds[name]:.1f}s (CPU {self.cpu_seconds[name]:.1f}s; "
                 f"{time.time() - self.t0:.0f}s in all)")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)


def _concat_windows(tokens: np.ndarray) -> np.ndarray:
    """(n, L) windows -> one array with an N between windows (no context spans two)."""
    from mamba_dna.tokenizer import N

    sep = np.full((tokens.shape[0], 1), N, np.uint8)
    return np.concatenate([tokens, sep], axis=1).reshape(-1)  # (n * (L + 1),)


def _fmt(v, nd: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


# --------------------------------------------------------------------------- 1. tokenize


def stage_tokenize(cfg: DemoConfig, data: Path, out: Path) -> dict:
    from mamba_dna.genome import Genome, WindowSpec
    from mamba_dna.shards import write_shards

    p = cfg.preset
    files = corpus_files(data)
    total = sum(Genome(f).total_length for f in files)
    # At least ~60 blocks so the 10% validation and test shares are never empty.
    block = max(p.seq_len, min(8 * p.seq_len, (total // 60) // p.seq_len * p.seq_len))
    spec = WindowSpec(length=p.seq_len, max_n_fraction=0.1, pad="N", split_by="block",
                      block_size=block, val_fraction=0.1, test_fraction=0.1, seed=cfg.seed)
    log.info(f"corpus: {len(files)} files, {total:,} bp: " + ", ".join(f.name for f in files))
    manifest = write_shards([str(f) for f in files], out, spec, invalid="N", overwrite=True)
    return {"files": [str(f.relative_to(data)) for f in files], "bases": total,
            "windows": manifest["counts"], "window": p.seq_len, "block": block,
            "dir": str(out)}


# --------------------------------------------------------------------------- 2. pretrain


def _calibrate(pcfg, device: torch.device) -> dict:
    """Seconds per optimizer step and per validation pass of this model on this machine.

    Random bases: the cost does not depend on the content. The first step (kernel
    compilation, allocator warm-up) is timed apart.
    """
    import torch.nn.functional as F
    from mamba_dna.pipelines.pretrain import BASE_HI, BASE_LO, build_model, param_groups

    torch.manual_seed(pcfg.seed)
    model = build_model(pcfg).to(device)
    opt = torch.optim.AdamW(param_groups(model, pcfg.weight_decay), lr=pcfg.lr)
    x = torch.randint(BASE_LO, BASE_HI + 1, (pcfg.batch_size, pcfg.seq_len), device=device)  # (B, L)

    def step() -> float:
        t = time.perf_counter()
        logits, _ = model(x[:, :-1])  # (B, L-1, vocab)
        F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    first = step()
    per_step = float(np.mean([step() for _ in range(2)]))
    t = time.perf_counter()
    with torch.no_grad():
        model.eval()
        model.log_probs(x[: min(pcfg.eval_batch_size, len(x))])
    per_eval = (time.perf_counter() - t) * pcfg.eval_windows / min(pcfg.eval_batch_size, len(x))
    return {"first_step_s": first, "step_s": per_step, "eval_s": per_eval}


def stage_pretrain(cfg: DemoConfig, shards: Path, out: Path) -> dict:
    from mamba_dna.pipelines.pretrain import PretrainConfig, pretrain

    from mamba_dna import distributed as mdist

    p = cfg.preset
    pcfg = PretrainConfig(
        inputs=[str(shards)], out=str(out),
        model={"d_model": p.d_model, "n_layer": p.n_layer},
        seq_len=p.seq_len, batch_size=p.batch_size, lr=p.lr, steps=1,
        eval_windows=p.eval_windows, markov_orders=p.markov_orders, seed=cfg.seed,
        device=cfg.device, log_every=5,
    )
    device = mdist.resolve_device(cfg.device)
    minutes = cfg.minutes if cfg.minutes is not None else (None if cfg.steps else p.minutes)
    cal = None
    if minutes is not None:
        cal = _calibrate(pcfg, device)
        budget = minutes * 60.0
        steps = int((budget - (p.n_evals + 1) * cal["eval_s"]) / cal["step_s"])
        steps = max(p.min_steps, steps)
        log.info(f"calibration on {device}: first step {cal['first_step_s']:.1f}s (kernel "
                 f"compilation), then {cal['step_s']:.2f}s per step of {p.batch_size} x "
                 f"{p.seq_len} bp, {cal['eval_s']:.1f}s per validation pass -> {steps} steps "
                 f"for {minutes:g} min")
    else:
        steps = cfg.steps or p.steps
    pcfg.steps = steps
    pcfg.warmup_steps = max(1, steps // 10)
    pcfg.eval_every = max(1, steps // p.n_evals)
    pcfg.checkpoint_every = steps  # checkpoints are not the demo's point: final (+ best) only

    stop = mdist.StopFlag()
    deadline = time.time() + 1.5 * minutes * 60 + 30 if minutes is not None else None

    def on_step(step: int, info: dict) -> None:
        if deadline is not None and time.time() > deadline and stop.received is None:
            stop.received = "the demo's time budget"

    t = time.time()
    with stop:
        summary = pretrain(pcfg, stop=stop, on_step=on_step)
    train_s = time.time() - t
    if summary.get("stopped_by") == "the demo's time budget":
        _finish_stopped_run(pcfg, summary, device)
    elif summary.get("stopped_by"):
        raise MambaDNAError(f"demo: pretraining stopped by {summary['stopped_by']} at step "
                            f"{summary['step']}; the partial run is in {out}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    vals = [r for r in rows if r.get("split") == "val"]
    trains = [r for r in rows if r.get("split") == "train"]
    base = summary.get("markov") or {}
    n_params = summary.get("parameters") or sum(
        int(np.prod(t.shape)) for t in _safetensors_shapes(out / "model" / "model.safetensors"))
    return {
        "dir": str(out), "model_dir": str(out / "model"), "curve": str(out / "curves.png"),
        "d_model": p.d_model, "n_layer": p.n_layer, "parameters": n_params,
        "steps": int(summary["step"]), "planned_steps": steps, "tokens": int(summary["tokens"]),
        "seq_len": p.seq_len, "batch_size": p.batch_size, "seconds": round(train_s, 1),
        "budget_minutes": minutes, "calibration": cal,
        "tokens_per_s": summary.get("train_tokens_per_s"),
        "val_bits_per_base": vals[-1]["bits_per_base"] if vals else None,
        "best_val_bits_per_base": min((r["bits_per_base"] for r in vals), default=None),
        "first_val_bits_per_base": vals[0]["bits_per_base"] if vals else None,
        "last_train_bits_per_base": trains[-1]["bits_per_base"] if trains else None,
        "val_bases": vals[-1]["val_bases"] if vals else None,
        "markov_order": base.get("order"), "markov_bits_per_base": base.get("bits_per_base"),
        "device": str(device),
    }


def _finish_stopped_run(pcfg, summary: dict, device: torch.device) -> None:
    """The run hit the demo's hard deadline (a machine much busier than at calibration):
    export the last checkpoint's weights as the model and validate them once, so the
    report and the later stages have a model, a final figure and a curve."""
    from mamba_dna.pipelines.pretrain import (
        build_model,
        checkpoint_paths,
        evaluate,
        load_checkpoint,
        load_data,
        plot_curves,
    )

    run = Path(pcfg.out)
    log.info(f"pretraining ran past 1.5x its budget: stopped at step {summary['step']} of "
             f"{pcfg.steps}; exporting the last checkpoint and validating it")
    ck = load_checkpoint(checkpoint_paths(run)[-1])
    model = build_model(pcfg).to(device)
    model.load_state_dict(ck["model"])
    _, val = load_data(pcfg)
    n = min(pcfg.eval_windows, len(val))
    idx = np.linspace(0, len(val) - 1, n).round().astype(int).tolist()
    nll, cnt = evaluate(model, val, idx, pcfg.eval_batch_size, device,
                        lambda: torch.autocast(device.type, enabled=False))
    baseline = json.loads((run / "baseline.json").read_text()) if (run / "baseline.json").exists() else None
    row = {"step": int(ck["step"]), "split": "val", "tokens": int(ck["tokens"]),
           "loss": nll / max(cnt, 1), "bits_per_base": nll / max(cnt, 1) / LN2, "val_bases": int(cnt),
           "markov_bits_per_base": baseline["bits_per_base"] if baseline else None,
           "markov_order": baseline["order"] if baseline else None, "stopped_early": True}
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    plot_curves(run / "metrics.jsonl", run / "curves.png", baseline)
    with atomic_dir(run / "model") as tmp:
        model.save_pretrained(tmp)


def _safetensors_shapes(path: Path) -> list[tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return [tuple(f.get_slice(k).get_shape()) for k in f.keys()]  # noqa: SIM118


# --------------------------------------------------------------------------- 3. score


def _corpus_markov(shards: Path, order: int):
    """The Markov peer on the network's own training windows (the fair comparison)."""
    from mamba_dna.baselines import MarkovModel
    from mamba_dna.shards import ShardDataset

    ds = ShardDataset(shards, "train")
    mm = MarkovModel(order)
    for i in range(0, len(ds), 1024):
        tok, _ = ds.batch(range(i, min(i + 1024, len(ds))))  # (b, L) uint8
        mm.fit([_concat_windows(tok)])
    return mm


def stage_score(cfg: DemoConfig, data: Path, model_dir: Path, shards: Path, order: int,
                out: Path) -> dict:
    from mamba_dna.pipelines.score import ScoreConfig, evaluate_labelled, load_scorer, read_scored
    from mamba_dna.pipelines.score import run as score_run

    from mamba_dna.genome import Genome

    p = cfg.preset
    out.mkdir(parents=True, exist_ok=True)
    sets = [
        {"key": "sarscov2", "name": "SARS-CoV-2 SNVs vs fitness", "ref": data / SARS2_REF,
         "vcf": data / SARS2_VCF, "label": "FITNESS", "metric": "spearman"},
        {"key": "mtdna", "name": "human mtDNA pathogenic vs common", "ref": data / MT_REF,
         "vcf": data / MT_VCF, "label": "Y", "metric": "auroc"},
    ]
    network = load_scorer(str(model_dir), device=cfg.device)
    corpus_mm = _corpus_markov(shards, order)
    results = []
    for s in sets:
        genome = Genome(s["ref"], invalid="N")
        if p.score_region_bp and s["key"] == "sarscov2":  # quick: the first bases only
            s["vcf"] = _head_vcf(s["vcf"], p.score_region_bp, out / f"{s['key']}.quick.vcf.gz")
        ref_mm = load_scorer("markov:auto", genome)
        scorers = [("network", "Mamba LM", "the pretrained model", network),
                   ("markov_corpus", f"Markov-{order} (corpus)",
                    f"order {order} (chosen in pretraining), fitted on the same training windows",
                    corpus_mm),
                   ("markov_ref", f"Markov-{ref_mm.order} (reference)",
                    "fitted on the scored reference itself, order chosen on its last 10%", ref_mm),
                   ("composition", "Markov-0 (composition)",
                    "base frequencies of the reference only: what composition alone gives",
                    load_scorer("markov:0", genome))]
        row = {"set": s["name"], "key": s["key"], "metric": s["metric"], "scorers": {}}
        for key, name, desc, scorer in scorers:
            tsv = out / f"{s['key']}.{key}.tsv"
            sc = ScoreConfig(vcf=str(s["vcf"]), fasta=str(s["ref"]), model=key, out=str(tsv),
                             scores=("llr",), device=cfg.device, tsv_info=(s["label"],))
            summ = score_run(sc, scorer=scorer)
            ev = evaluate_labelled(str(tsv), str(s["vcf"]), s["label"], metric=s["metric"],
                                   score="llr", threshold=FITNESS_BAD if s["metric"] == "spearman" else None)
            rows = read_scored(str(tsv))
            lab = s["label"].lower()
            llr = np.array([float(r["llr"]) if r["llr"] not in (".", "") else np.nan for r in rows])
            y = np.array([float(r[lab]) if r.get(lab) not in (None, ".", "") else np.nan for r in rows])
            row["scorers"][key] = {
                "desc": desc, "name": name, "tsv": str(tsv),
                "value": ev["value"], "n": ev["n"], "auroc_below": ev.get("auroc_below_threshold"),
                "scored": summ.scored, "seconds": round(summ.seconds, 1),
                "_llr": llr, "_y": y,
            }
            log.info(f"{s['name']}: {name}: {s['metric']} {ev['value']:.4f} (n={ev['n']:,})")
        results.append(row)
    _plot_scores(results, out / "score_distributions.png")
    for r in results:  # arrays were for the plot only
        for v in r["scorers"].values():
            v.pop("_llr"), v.pop("_y")
    return {"sets": results, "plot": str(out / "score_distributions.png"), "region": p.score_region_bp}


def _head_vcf(src: Path, bp: int, dest: Path) -> Path:
    """The header and the records with POS <= bp of a VCF (quick mode), gzip-compressed."""
    import gzip

    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt") as fh, atomic_path(dest) as tmp, gzip.open(tmp, "wt") as w:
        for line in fh:
            if line.startswith("#") or int(line.split("\t", 2)[1]) <= bp:
                w.write(line)
    return dest


def _plot_scores(results: list[dict], path: Path) -> None:
    plt = _plt()
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
    _save_png(fig, path)


# --------------------------------------------------------------------------- 4. embed


def _loo_1nn(X: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy (cosine on standardised features)."""
    Z = (X - X.mean(0)) / (X.std(0) + 1e-8)  # (n, d)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True) + 1e-12
    S = Z @ Z.T  # (n, n)
    np.fill_diagonal(S, -np.inf)
    return float(np.mean(y[S.argmax(1)] == y))


def _pca2(X: np.ndarray) -> np.ndarray:
    Z = (X - X.mean(0)) / (X.std(0) + 1e-8)  # (n, d)
    U, S, _ = np.linalg.svd(Z, full_matrices=False)
    return U[:, :2] * S[:2]  # (n, 2)


def stage_embed(cfg: DemoConfig, data: Path, model_dir: Path, out: Path) -> dict:
    import h5py
    from mamba_dna.pipelines.embed import EmbedConfig, run_embed

    from mamba_dna.baselines import kmer_profile
    from mamba_dna.genome import Genome

    p = cfg.preset
    out.mkdir(parents=True, exist_ok=True)
    fasta = data / DENGUE
    bed = None
    if p.embed_bp:  # quick: the first bases of every genome
        g = Genome(fasta)
        bed = out / "dengue_quick.bed"
        with atomic_path(bed) as tmp:
            tmp.write_text("".join(f"{n}\t0\t{min(p.embed_bp, g.lengths[n])}\t{n}\n" for n in g.names))
    h5 = run_embed(EmbedConfig(fasta=str(fasta), model=str(model_dir), out=str(out / "dengue.h5"),
                               bed=str(bed) if bed else None, window=0, pool="mean",
                               device=cfg.device))
    with h5py.File(h5, "r") as f:
        X = f["pooled"][:].astype(np.float64)  # (n, d)
        chrom = f["items/chrom"].asstr()[:]
        starts, ends = f["items/start"][:], f["items/end"][:]
    pat = re.compile(SEROTYPE_RE)
    keep = np.array([bool(pat.search(c)) for c in chrom])
    y = np.array([pat.search(c).group(1) if k else "" for c, k in zip(chrom, keep, strict=True)])
    X, y = X[keep], y[keep]
    g = Genome(fasta, invalid="N")
    K = np.stack([kmer_profile(g.tokens(c, int(s), int(e))[0], 4, both_strands=True)
                  for c, s, e, k in zip(chrom, starts, ends, keep, strict=True) if k]).astype(np.float64)
    acc_model, acc_kmer = _loo_1nn(X, y), _loo_1nn(K, y)
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, M, title in ((axes[0], X, f"Mamba embeddings (d={X.shape[1]}): LOO 1-NN {acc_model:.3f}"),
                         (axes[1], K, f"4-mer profiles: LOO 1-NN {acc_kmer:.3f}")):
        P = _pca2(M)
        for lab in sorted(set(y)):
            m = y == lab
            ax.scatter(P[m, 0], P[m, 1], s=18, label=f"{lab} ({int(m.sum())})")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
        ax.legend(fontsize=7)
    fig.suptitle(f"{len(y)} dengue genomes ({fasta.name}), whole-genome mean pooling",
                 fontsize=9)
    fig.tight_layout()
    _save_png(fig, out / "dengue_pca.png")
    counts = {lab: int((y == lab).sum()) for lab in sorted(set(y))}
    return {"h5": str(h5), "n": int(len(y)), "d": int(X.shape[1]), "classes": counts,
            "bp": int((ends - starts)[keep].sum()), "quick_bp": p.embed_bp, "loo_1nn_model": acc_model,
            "loo_1nn_kmer": acc_kmer, "plot": str(out / "dengue_pca.png")}


# --------------------------------------------------------------------------- 5. classify


def stage_classify(cfg: DemoConfig, data: Path, model_dir: Path, out: Path) -> dict:
    from mamba_dna.pipelines.classify import ClassifyConfig, run_train

    p = cfg.preset
    out.mkdir(parents=True, exist_ok=True)
    labels = out / "labels.tsv"
    with atomic_path(labels) as tmp:
        tmp.write_text(f"file\tgroup\tspecies\n{(data / DENGUE).resolve()}\tvirus\tDengue_virus\n")
    ccfg = ClassifyConfig(labels=str(labels), out=str(out), model=str(model_dir),
                          label_from_record=SEROTYPE_RE, window=p.classify_window,
                          split_by="record", per_class=p.per_class, bp_per_class=p.bp_per_class,
                          lengths=tuple(p.classify_lengths), max_length=max(p.classify_lengths),
                          seed=cfg.seed, device=cfg.device,
                          kmer_ks=tuple(p.kmer_ks) if p.kmer_ks else None)
    rep = run_train(ccfg)
    res = rep["results"]
    table = rep.get("length_table") or []
    _plot_lengths(table, out / "accuracy_vs_length.png")
    return {"dir": str(out), "window": p.classify_window, "classes": rep["classes"],
            "model": {k: res["model"][k] for k in ("features", "accuracy", "balanced_accuracy", "n")},
            "kmer": {k: res["kmer"][k] for k in ("features", "accuracy", "balanced_accuracy", "n")},
            "confusion_model": res["model"]["confusion"], "confusion_kmer": res["kmer"]["confusion"],
            "length_table": table,
            "plots": {"confusion_model": str(out / "confusion_model.png"),
                      "confusion_kmer": str(out / "confusion_kmer.png"),
                      "accuracy_vs_length": str(out / "accuracy_vs_length.png")}}


def _plot_lengths(table: list[dict], path: Path) -> None:
    plt = _plt()
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
    _save_png(fig, path)


# --------------------------------------------------------------------------- 6. report


def _rel(path: str, out: Path) -> str:
    return os.path.relpath(path, out)


def write_report(res: dict, out: Path) -> Path:
    """OUT/report.md: every figure with its baseline; plots linked relative to OUT."""
    c, tk, pt, sc, em, cl = (res["config"], res["tokenize"], res["pretrain"], res["score"],
                             res["embed"], res["classify"])
    L = [f"# mamba-dna demo{' (quick mode: toy scale, figures mean little)' if c['quick'] else ''}", ""]
    L += [f"mamba-dna {__version__}, {res['machine']}; data: `{res['data']}`; "
          f"total wall time {res['total_seconds']:.0f} s"
          + (f" (load average at the end {res['load_end']:.1f})" if res.get("load_end") is not None else "")
          + ".", ""]
    L += ["## 1. Data and tokenization", "",
          f"Pretraining corpus: {len(tk['files'])} FASTA files, {tk['bases']:,} bp (one reference "
          "genome per virus species, no dengue; three mitochondrial genomes). Windows of "
          f"{tk['window']:,} bp; {tk['block']:,} bp position blocks dealt to train / val / test "
          "(regions held out, not records): "
          + ", ".join(f"{k} {v:,}" for k, v in tk["windows"].items()) + " windows.", "",
          "Files: " + ", ".join(f"`{f}`" for f in tk["files"]), ""]
    cal = pt["calibration"]
    budget = (f"a {pt['budget_minutes']:g}-minute budget (calibrated: {cal['step_s']:.2f} s per step, "
              f"first step {cal['first_step_s']:.1f} s)" if cal else f"a fixed {pt['planned_steps']} steps")
    L += ["## 2. Pretraining", "",
          f"Mamba LM, n_layer {pt['n_layer']}, d_model {pt['d_model']} ({pt['parameters'] or 0:,} "
          f"parameters), next-base prediction on {pt['batch_size']} x {pt['seq_len']:,} bp per step, "
          f"reverse-complement augmentation; {pt['steps']} steps ({pt['tokens']:,} tokens) in "
          f"{pt['seconds']:.0f} s on {pt['device']}, {budget}."
          + (f" Stopped after {pt['steps']} of {pt['planned_steps']} planned steps at 1.5x the "
             "budget: the machine was busier than during calibration."
             if pt["steps"] < pt["planned_steps"] else ""), "",
          "| model (validation: held-out regions) | bits per base |", "|---|---|",
          f"| Mamba LM, final | {_fmt(pt['val_bits_per_base'], 4)} |",
          f"| Mamba LM, best | {_fmt(pt['best_val_bits_per_base'], 4)} |",
          f"| Markov, order {pt['markov_order']} (best of orders "
          f"{c['preset']['markov_orders'][0]}-{c['preset']['markov_orders'][-1]} on validation) "
          f"| {_fmt(pt['markov_bits_per_base'], 4)} |",
          "| uniform | 2.0000 |", "",
          f"Validation: {pt['val_bases'] or 0:,} bases. Near-identical genomes were left out of "
          "the corpus, so a held-out region has no copy in training (three ebolavirus species "
          "and human/chimpanzee mtDNA are related, for both models alike).", "",
          f"![training curve]({_rel(pt['curve'], out)})", ""]
    L += ["## 3. Zero-shot variant effect scores", "",
          "LLR = log P(alt) - log P(ref) at the SNV given its context, both strands averaged "
          "(one streaming pass per strand, the fast path). SARS-CoV-2: Spearman rho of LLR vs "
          f"the fitness estimate (and AUROC of FITNESS < {FITNESS_BAD:g}); mtDNA: AUROC of "
          "-LLR for pathogenic vs common.", ""]
    if sc.get("region"):
        L += [f"(quick mode: only the variants in the first {sc['region']:,} bp of SARS-CoV-2 are scored)", ""]
    keys = list(sc["sets"][0]["scorers"])
    L += ["| variant set | metric | n | " + " | ".join(sc["sets"][0]["scorers"][k]["name"] for k in keys) + " |",
          "|---|---|---|" + "---|" * len(keys)]
    for s in sc["sets"]:
        vals = [s["scorers"][k] for k in keys]
        L.append(f"| {s['set']} | {'Spearman rho' if s['metric'] == 'spearman' else 'AUROC'} | "
                 f"{vals[0]['n']:,} | " + " | ".join(_fmt(v["value"]) for v in vals) + " |")
        if s["metric"] == "spearman":
            L.append(f"| {s['set']} | AUROC (FITNESS < {FITNESS_BAD:g}) | {vals[0]['n']:,} | "
                     + " | ".join(_fmt(v["auroc_below"]) for v in vals) + " |")
    L += ["", "Scorers: " + "; ".join(f"**{sc['sets'][0]['scorers'][k]['name']}** = "
                                      f"{sc['sets'][0]['scorers'][k]['desc']}" for k in keys) + ".",
          "Chance is rho 0 / AUROC 0.5. Where a model's figure is close to Markov-0's, its LLR "
          "says little beyond base composition.", "",
          f"![score distributions]({_rel(sc['plot'], out)})", ""]
    L += ["## 4. Embeddings", "",
          f"`{_rel(em['h5'], out)}`: {em['n']} dengue genomes ({em['bp']:,} bp), mean-pooled final "
          f"hidden state (d = {em['d']}), forward strand; no dengue genome was in pretraining"
          + (f" (quick mode: the first {em['quick_bp']} bp of each genome)" if em.get("quick_bp") else "")
          + ". Serotypes: "
          + ", ".join(f"{k} {v}" for k, v in em["classes"].items()) + ".", "",
          "| features (whole genomes) | leave-one-out 1-NN serotype accuracy |", "|---|---|",
          f"| Mamba embeddings | {_fmt(em['loo_1nn_model'])} |",
          f"| 4-mer profiles (baseline) | {_fmt(em['loo_1nn_kmer'])} |", "",
          f"![PCA of embeddings]({_rel(em['plot'], out)})", ""]
    L += ["## 5. Species classification", "",
          f"Dengue serotype (labels from record names) from one {cl['window']:,} bp window; "
          "whole genomes held out for validation and test (`classify train --split-by record`), "
          "balanced classes, logistic regression on each feature set (k of the k-mer profile "
          f"chosen on validation among {', '.join(map(str, c['preset']['kmer_ks'] or (3, 4, 5, 6)))}).", "",
          "| features | test accuracy | balanced accuracy | n test windows |", "|---|---|---|---|"]
    for k in ("model", "kmer"):
        r = cl[k]
        name = "Mamba embeddings" if k == "model" else f"k-mer profile (k={r['features'].split('-')[-1]})"
        L.append(f"| {name} | {_fmt(r['accuracy'])} | {_fmt(r['balanced_accuracy'])} | {r['n']} |")
    L += ["", f"![confusion, model]({_rel(cl['plots']['confusion_model'], out)}) "
          f"![confusion, k-mer]({_rel(cl['plots']['confusion_kmer'], out)})", "",
          "Accuracy vs window length (test windows from held-out genomes):", "",
          "| window (bp) | Mamba embeddings | k-mer profile | k | train windows per class |",
          "|---|---|---|---|---|"]
    for r in cl["length_table"]:
        L.append(f"| {r['window']:,} | {_fmt(r.get('model_accuracy'))} | {_fmt(r.get('kmer_accuracy'))} "
                 f"| {r.get('kmer_k', '')} | {r.get('n_train_per_class', '')} |")
    L += ["", f"![accuracy vs window length]({_rel(cl['plots']['accuracy_vs_length'], out)})", ""]
    L += ["## 6. Timings", "", "Wall-clock and CPU seconds (all threads of the process; "
          "on a shared machine the wall time depends on the load, the CPU time much less).", "",
          "| stage | wall s | CPU s |", "|---|---|---|"]
    L += [f"| {k} | {v:.1f} | {res['stage_cpu_seconds'].get(k, float('nan')):.1f} |"
          for k, v in res["stage_seconds"].items()]
    L += [f"| total | {res['total_seconds']:.1f} | {res['total_cpu_seconds']:.1f} |", ""]
    L += ["## Notes", "",
          "- A few CPU minutes of pretraining make a small model: compare each figure with its "
          "baseline on the same data, not with published models trained for GPU-days.",
          "- k-mer statistics are strong on these tasks; the Markov and k-mer rows say what "
          "counting alone gets.",
          "- Re-run with a bigger budget: `mamba-dna demo --minutes 30`, or use the commands "
          "themselves (`mamba-dna tokenize / pretrain / score / embed / classify`).", ""]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(L))
    return path


def headline(res: dict) -> dict:
    """The figures printed on stdout (also in summary.json)."""
    pt, sc, em, cl = res["pretrain"], res["score"], res["embed"], res["classify"]
    h = {"pretrain_val_bits_per_base": pt["val_bits_per_base"],
         "markov_val_bits_per_base": pt["markov_bits_per_base"], "markov_order": pt["markov_order"]}
    for s in sc["sets"]:
        for k, v in s["scorers"].items():
            h[f"{s['key']}_{s['metric']}_{k}"] = v["value"]
    h.update({"embed_loo_1nn_model": em["loo_1nn_model"], "embed_loo_1nn_kmer": em["loo_1nn_kmer"],
              "classify_accuracy_model": cl["model"]["accuracy"],
              "classify_accuracy_kmer": cl["kmer"]["accuracy"],
              "total_seconds": res["total_seconds"]})
    return h


def format_headline(res: dict) -> str:
    """What `mamba-dna demo` prints on stdout: where everything went + the headline figures."""
    pt, sc, em, cl = res["pretrain"], res["score"], res["embed"], res["classify"]
    rows = [("report", res["report"]), ("model", pt["model_dir"]),
            ("embeddings", em["h5"]), ("classifiers", cl["dir"]),
            ("pretrain", f"validation {_fmt(pt['val_bits_per_base'], 4)} bits/base after "
                         f"{pt['steps']} steps / {pt['tokens']:,} tokens (Markov order "
                         f"{pt['markov_order']}: {_fmt(pt['markov_bits_per_base'], 4)}, uniform 2)")]
    for s in sc["sets"]:
        v = s["scorers"]
        metric = "Spearman rho" if s["metric"] == "spearman" else "AUROC"
        rows.append(("score", f"{s['set']}: {metric} {_fmt(v['network']['value'])} (Markov same "
                              f"corpus {_fmt(v['markov_corpus']['value'])}, Markov on the reference "
                              f"{_fmt(v['markov_ref']['value'])}, composition only "
                              f"{_fmt(v['composition']['value'])}), n={v['network']['n']:,}"))
    rows.append(("embed", f"{em['n']} dengue genomes: serotype LOO 1-NN {_fmt(em['loo_1nn_model'])} "
                          f"(4-mer profiles {_fmt(em['loo_1nn_kmer'])})"))
    rows.append(("classify", f"dengue serotype from {cl['window']:,} bp windows of held-out genomes: "
                             f"accuracy {_fmt(cl['model']['accuracy'])} (k-mer "
                             f"{_fmt(cl['kmer']['accuracy'])})"))
    rows.append(("total", f"{res['total_seconds']:.0f} s wall, {res['total_cpu_seconds']:.0f} s CPU"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


# --------------------------------------------------------------------------- the run


def _machine() -> str:
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores "
            f"({threads} torch threads{load}), {dev}, torch {torch.__version__}")


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage, write OUT/report.md and OUT/summary.json; return the results."""
    cfg = cfg.resolved()
    stages = _Stages()
    data = find_data(cfg.data)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").exists():
        raise ConfigError(f"--out {out}: directory exists and is not a demo output",
                          hint="choose a new --out or remove the directory")
    out.mkdir(parents=True, exist_ok=True)
    for old in OUTPUTS:  # a previous demo's results: nothing stale survives a re-run
        path = out / old
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    write_json(out / "config.json", {**asdict(cfg), "data_resolved": str(data),
                                     "mamba_dna_version": __version__})
    log.info(f"demo: data {data}, output {out}{' (quick mode)' if cfg.quick else ''}; {_machine()}")
    res: dict = {"config": asdict(cfg), "data": str(data), "machine": _machine()}

    t = stages.start("tokenize", "virus + mitochondrial genomes -> shards")
    res["tokenize"] = stage_tokenize(cfg, data, out / "shards")
    stages.done("tokenize", t)

    t = stages.start("pretrain", "a small Mamba LM; validation bits/base beside the Markov baseline")
    res["pretrain"] = stage_pretrain(cfg, out / "shards", out / "pretrain")
    stages.done("pretrain", t)
    model_dir = Path(res["pretrain"]["model_dir"])

    t = stages.start("score", "SARS-CoV-2 fitness and human mtDNA variants, network vs Markov")
    res["score"] = stage_score(cfg, data, model_dir, out / "shards",
                               int(res["pretrain"]["markov_order"] or 0), out / "score")
    stages.done("score", t)

    t = stages.start("embed", "dengue genomes -> HDF5; serotype neighbours vs 4-mer profiles")
    res["embed"] = stage_embed(cfg, data, model_dir, out / "embed")
    stages.done("embed", t)

    t = stages.start("classify", "dengue serotypes from windows of held-out genomes")
    res["classify"] = stage_classify(cfg, data, model_dir, out / "classify")
    stages.done("classify", t)

    stages.start("report", "report.md")
    res["stage_seconds"] = stages.seconds
    res["stage_cpu_seconds"] = stages.cpu_seconds
    res["total_seconds"] = round(time.time() - stages.t0, 1)
    res["total_cpu_seconds"] = round(time.process_time() - stages.c0, 1)
    res["load_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    res["report"] = str(write_report(res, out))
    res["headline"] = headline(res)
    write_json(out / "summary.json", res)
    log.info(f"demo: done in {res['total_seconds']:.0f}s; report {res['report']}")
    return res
