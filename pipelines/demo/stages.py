"""The demo's stages, one function each: tokenize, pretrain, score, embed, classify. Each
returns the figures the report prints (beside their baselines)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from mamba_dna import log
from mamba_dna.device import resolve_device
from mamba_dna.errors import MambaDNAError
from mamba_dna.fsutil import atomic_path

from .config import (
    DENGUE,
    FITNESS_BAD,
    MT_REF,
    MT_VCF,
    SARS2_REF,
    SARS2_VCF,
    SEROTYPE_RE,
    DemoConfig,
)
from .data import corpus_files
from .plots import plot_embeddings, plot_lengths, plot_scores


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


def stage_pretrain(cfg: DemoConfig, shards: Path, out: Path, arch: str = "mamba") -> dict:
    """A small model for the time budget (or fixed steps); a run stopped at the hard deadline
    is exported as it stands (Pretrainer.export). arch "caduceus-ps": the bidirectional stage,
    a masked LM (narrower, `mlm_share` of the budget) beside the two-sided k-mer baseline."""
    from dataclasses import replace

    from mamba_dna import distributed as mdist
    from mamba_dna.pipelines.pretrain import PretrainConfig, Pretrainer, calibrate, read_metrics

    p = cfg.preset
    mlm = arch != "mamba"
    d_model, n_layer = (p.mlm_d_model, p.mlm_n_layer) if mlm else (p.d_model, p.n_layer)
    pcfg = PretrainConfig(
        inputs=[str(shards)], out=str(out), arch=arch,
        model={"d_model": d_model, "n_layer": n_layer},
        seq_len=p.seq_len, batch_size=p.batch_size, lr=p.lr, steps=1,
        eval_windows=p.eval_windows, markov_orders=p.markov_orders, seed=cfg.seed,
        device=cfg.device, log_every=5,
    )
    device = resolve_device(cfg.device)
    minutes = cfg.minutes if cfg.minutes is not None else (None if cfg.steps else p.minutes)
    if mlm and minutes is not None:
        minutes *= p.mlm_share
    cal = calibrate(pcfg, device) if minutes is not None else None
    steps = _budget_steps(cfg, cal, minutes, device)
    pcfg = replace(pcfg, steps=steps, warmup_steps=max(1, steps // 10),
                   eval_every=max(1, steps // p.n_evals),
                   checkpoint_every=steps)  # checkpoints are not the demo's point: final (+ best) only

    stop = mdist.StopFlag()
    deadline = time.time() + 1.5 * minutes * 60 + 30 if minutes is not None else None

    def on_step(step: int, info: dict) -> None:
        if deadline is not None and time.time() > deadline and stop.received is None:
            stop.received = "the demo's time budget"

    t = time.time()
    trainer = Pretrainer(pcfg, stop=stop, on_step=on_step)
    with stop:
        result = trainer.run()
    train_s = time.time() - t
    if result.stopped_by == "the demo's time budget":
        # a machine much busier than at calibration: the last weights still make the model
        log.info(f"pretraining ran past 1.5x its budget: stopped at step {result.step} of {steps}")
        trainer.export()
    elif result.stopped_by:
        raise MambaDNAError(f"demo: pretraining stopped by {result.stopped_by} at step "
                            f"{result.step}; the partial run is in {out}")
    kmer2 = result.kmer2 or {}
    return {"dir": str(out), "model_dir": str(out / "model"), "curve": str(out / "curves.png"),
            "arch": arch, "objective": result.objective,
            "d_model": d_model, "n_layer": n_layer, "parameters": result.parameters,
            "steps": int(result.step), "planned_steps": steps, "tokens": int(result.tokens),
            "seq_len": p.seq_len, "batch_size": p.batch_size, "seconds": round(train_s, 1),
            "budget_minutes": minutes, "calibration": cal, "tokens_per_s": result.train_tokens_per_s,
            **_curve_figures(read_metrics(out)),
            "markov_order": (result.markov or {}).get("order"),
            "markov_bits_per_base": (result.markov or {}).get("bits_per_base"),
            "kmer2_k": kmer2.get("k"), "kmer2_bits_per_base": kmer2.get("masked_bits_per_base"),
            "device": str(device)}


def _curve_figures(rows: list[dict]) -> dict:
    """The validation and training figures the report quotes, from metrics.jsonl rows."""
    vals = [r for r in rows if r.get("split") == "val"]
    trains = [r for r in rows if r.get("split") == "train"]
    return {
        "val_bits_per_base": vals[-1]["bits_per_base"] if vals else None,
        "best_val_bits_per_base": min((r["bits_per_base"] for r in vals), default=None),
        "first_val_bits_per_base": vals[0]["bits_per_base"] if vals else None,
        "last_train_bits_per_base": trains[-1]["bits_per_base"] if trains else None,
        "val_bases": vals[-1].get("val_bases", vals[-1].get("masked_targets")) if vals else None,
    }


def _budget_steps(cfg: DemoConfig, cal: dict | None, minutes: float | None, device) -> int:
    """Pretraining steps: what fits `minutes` by the calibration, else --steps or the preset's."""
    p = cfg.preset
    if minutes is None:
        return cfg.steps or p.steps
    steps = int((minutes * 60.0 - (p.n_evals + 1) * cal["eval_s"]) / cal["step_s"])
    steps = max(p.min_steps, steps)
    log.info(f"calibration on {device}: first step {cal['first_step_s']:.1f}s (kernel "
             f"compilation), then {cal['step_s']:.2f}s per step of {p.batch_size} x "
             f"{p.seq_len} bp, {cal['eval_s']:.1f}s per validation pass -> {steps} steps "
             f"for {minutes:g} min")
    return steps


def _corpus_markov(shards: Path, order: int):
    """The Markov peer on the network's own training windows (the fair comparison)."""
    from mamba_dna.baselines import MarkovModel
    from mamba_dna.pipelines.pretrain import join_windows
    from mamba_dna.shards import ShardDataset

    ds = ShardDataset(shards, "train")
    mm = MarkovModel(order)
    for i in range(0, len(ds), 1024):
        tok, _ = ds.batch(range(i, min(i + 1024, len(ds))))  # (b, L) uint8
        mm.fit([join_windows(tok)])
    return mm


def _scorer_rows(network, model_label: str, genome, shards: Path | None, order: int) -> list[tuple]:
    """(key, name, description, scorer, --scores, column) of each scorer of one variant set.

    A masked network is scored by MLM_LLR (column mlm_llr) beside the two-sided k-mer model
    fitted on the reference (the fair bar for a model that sees both sides); a causal one by
    LLR beside the Markov model of its own training windows (`shards`, when the demo
    pretrained it). Both get the reference Markov model and composition."""
    from mamba_dna.pipelines.score import load_scorer

    masked = getattr(network, "is_causal", True) is False
    rows = [("network", model_label, "the given model" if shards is None else "the pretrained model",
             network, "mlm" if masked else "llr", "mlm_llr" if masked else "llr")]
    if masked:
        rows.append(("kmer2_ref", "two-sided k-mer (reference)",
                     "P(base | k bases each side), fitted on the scored reference, k chosen on its last "
                     "10%; MLM_LLR with the same windows", load_scorer("kmer2:auto", genome), "mlm", "mlm_llr"))
    elif shards is not None:
        rows.append(("markov_corpus", f"Markov-{order} (corpus)",
                     f"order {order} (chosen in pretraining), fitted on the same training windows",
                     _corpus_markov(shards, order), "llr", "llr"))
    ref_mm = load_scorer("markov:auto", genome)
    rows += [("markov_ref", f"Markov-{ref_mm.order} (reference)",
              "fitted on the scored reference itself, order chosen on its last 10%", ref_mm, "llr", "llr"),
             ("composition", "Markov-0 (composition)",
              "base frequencies of the reference only: what composition alone gives",
              load_scorer("markov:0", genome), "llr", "llr")]
    return rows


def stage_score(cfg: DemoConfig, data: Path, model_dir: str, shards: Path | None, order: int,
                out: Path, model_label: str = "Mamba LM") -> dict:
    """Zero-shot scores of both variant sets by the network and its baselines; `shards` None
    (a given --model): no corpus Markov peer (the model was trained elsewhere)."""
    from mamba_dna.genome import Genome
    from mamba_dna.pipelines.score import ScoreConfig, evaluate_labelled, load_scorer, read_scored
    from mamba_dna.pipelines.score import run_score as score_run

    p = cfg.preset
    out.mkdir(parents=True, exist_ok=True)
    sets = [
        {"key": "sarscov2", "name": "SARS-CoV-2 SNVs vs fitness", "ref": data / SARS2_REF,
         "vcf": data / SARS2_VCF, "label": "FITNESS", "metric": "spearman"},
        {"key": "mtdna", "name": "human mtDNA pathogenic vs common", "ref": data / MT_REF,
         "vcf": data / MT_VCF, "label": "Y", "metric": "auroc"},
    ]
    network = load_scorer(str(model_dir), device=cfg.device)
    results = []
    for s in sets:
        genome = Genome(s["ref"], invalid="N")
        if p.score_region_bp and s["key"] == "sarscov2":  # quick: the first bases only
            s["vcf"] = _head_vcf(s["vcf"], p.score_region_bp, out / f"{s['key']}.quick.vcf.gz")
        row = {"set": s["name"], "key": s["key"], "metric": s["metric"], "scorers": {}}
        for key, name, desc, scorer, score, col in _scorer_rows(network, model_label, genome, shards, order):
            tsv = out / f"{s['key']}.{key}.tsv"
            sc = ScoreConfig(vcf=str(s["vcf"]), fasta=str(s["ref"]), model=key, out=str(tsv),
                             scores=(score,), device=cfg.device, tsv_info=(s["label"],))
            summ = score_run(sc, scorer=scorer)
            ev = evaluate_labelled(str(tsv), str(s["vcf"]), s["label"], metric=s["metric"],
                                   score=col, threshold=FITNESS_BAD if s["metric"] == "spearman" else None)
            rows = read_scored(str(tsv))
            lab = s["label"].lower()
            llr = np.array([float(r[col]) if r[col] not in (".", "") else np.nan for r in rows])
            y = np.array([float(r[lab]) if r.get(lab) not in (None, ".", "") else np.nan for r in rows])
            row["scorers"][key] = {
                "desc": desc, "name": name, "tsv": str(tsv),
                "value": ev["value"], "n": ev["n"], "auroc_below": ev.get("auroc_below_threshold"),
                "score": col,
                "scored": summ.scored, "seconds": round(summ.seconds, 1),
                "_llr": llr, "_y": y,
            }
            log.info(f"{s['name']}: {name}: {s['metric']} {ev['value']:.4f} (n={ev['n']:,})")
        results.append(row)
    plot_scores(results, out / "score_distributions.png")
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


def _loo_1nn(X: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out 1-nearest-neighbour accuracy (cosine on standardised features)."""
    Z = (X - X.mean(0)) / (X.std(0) + 1e-8)  # (n, d)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True) + 1e-12
    S = Z @ Z.T  # (n, n)
    np.fill_diagonal(S, -np.inf)
    return float(np.mean(y[S.argmax(1)] == y))


def stage_embed(cfg: DemoConfig, data: Path, model_dir: Path, out: Path) -> dict:
    import h5py

    from mamba_dna.baselines import kmer_profile
    from mamba_dna.genome import Genome
    from mamba_dna.pipelines.embed import EmbedConfig, run_embed

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
    plot_embeddings(X, K, y, acc_model, acc_kmer, f"{len(y)} dengue genomes ({fasta.name}), "
                    "whole-genome mean pooling", out / "dengue_pca.png")
    counts = {lab: int((y == lab).sum()) for lab in sorted(set(y))}
    return {"h5": str(h5), "n": int(len(y)), "d": int(X.shape[1]), "classes": counts,
            "bp": int((ends - starts)[keep].sum()), "quick_bp": p.embed_bp, "loo_1nn_model": acc_model,
            "loo_1nn_kmer": acc_kmer, "plot": str(out / "dengue_pca.png")}


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
    plot_lengths(table, out / "accuracy_vs_length.png")
    return {"dir": str(out), "window": p.classify_window, "classes": rep["classes"],
            "model": {k: res["model"][k] for k in ("features", "accuracy", "balanced_accuracy", "n")},
            "kmer": {k: res["kmer"][k] for k in ("features", "accuracy", "balanced_accuracy", "n")},
            "confusion_model": res["model"]["confusion"], "confusion_kmer": res["kmer"]["confusion"],
            "length_table": table,
            "plots": {"confusion_model": str(out / "confusion_model.png"),
                      "confusion_kmer": str(out / "confusion_kmer.png"),
                      "accuracy_vs_length": str(out / "accuracy_vs_length.png")}}

