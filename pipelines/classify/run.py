"""`classify train`: setup (labels, split, model) -> run (probe, k-mer bar, fine-tuning, the
length table) -> save (classifiers, confusion matrices, report)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from mamba_dna import log
from mamba_dna.errors import InputError
from mamba_dna.fsutil import atomic_path, guard_output, os_errors, prepare_output, write_json

from .config import ClassifyConfig
from .data import GenomeCache, draw_windows, make_segments, read_labels
from .probe import FeatureSpec, fit_eval, load_backbone
from .report import confusion_png, format_report, write_segments, write_table

DEFAULT_LENGTHS = tuple(2**p for p in range(10, 21))  # the length table: 1 kb .. 1 Mb


def run_train(cfg: ClassifyConfig) -> dict:
    """Train + evaluate (model and k-mer baseline); write everything under cfg.out."""
    # setup (the model first: its kind fixes defaults and may refuse options)
    model, sha = load_backbone(cfg.model, cfg.device) if cfg.model else (None, "")
    cfg = resolve_for_model(cfg, model)  # the report says what ran
    out = Path(cfg.out)
    sources = read_labels(cfg.labels, label_column=cfg.label_column, group=cfg.group,
                          include=cfg.include, label_from_record=cfg.label_from_record)
    guard_output(out, [cfg.labels, cfg.model, *{s.file for s in sources}])
    prepare_output(out / "report.json")
    with os_errors(out):  # read-only / full disk: one line naming the file
        return _run_train(cfg, out, sources, model, sha)


def _run_train(cfg: ClassifyConfig, out: Path, sources, model, sha: str) -> dict:
    classes = sorted({s.label for s in sources})
    log.info(f"{len(sources)} records, {len(classes)} classes: {', '.join(classes)}")
    segs = make_segments(sources, split_by=cfg.split_by, window=cfg.window,
                         block=cfg.block or cfg.window, seed=cfg.seed)
    write_segments(out / "split.tsv", segs)
    job = _Job(cfg, model, _probe_spec(cfg, model, sha), GenomeCache())
    # run + save: the main window length (classifiers saved, full report), then the table
    wins = _main_windows(cfg, segs)
    res = job.fit(segs, wins, finetune=cfg.finetune is not None)
    report = {"config": asdict(cfg), "classes": classes, "results": _save_classifiers(cfg, res, out)}
    report["length_table"] = _length_table(job, sources, segs, wins, res, len(classes))
    write_table(out / "accuracy_vs_length.tsv", report["length_table"])
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(format_report(report))
    return report


def resolve_for_model(cfg: ClassifyConfig, model) -> ClassifyConfig:
    """`cfg` with its model-dependent defaults fixed: rc_average None -> on for a bidirectional
    backbone, off for a causal one (or none); finetune pool None -> mean for bidirectional,
    last for causal. Pooling "last" with a bidirectional backbone is a ConfigError."""
    from mamba_dna.pipelines.embed.arch import check_pool, is_bidirectional

    bidir = model is not None and is_bidirectional(model)
    if model is not None:
        check_pool(model, cfg.pool)
    changes = {}
    if cfg.rc_average is None:
        changes["rc_average"] = bidir
    if cfg.finetune is not None:
        ft = cfg.finetune
        if ft.pool is None:
            ft = replace(ft, pool="mean" if bidir else "last")
        if bidir:
            check_pool(model, ft.pool, "--finetune-pool")
        changes["finetune"] = ft
    return replace(cfg, **changes) if changes else cfg


def _probe_spec(cfg: ClassifyConfig, model, sha: str) -> FeatureSpec | None:
    """The probe's FeatureSpec (None without a model)."""
    if model is None:
        return None
    return FeatureSpec("embedding", pool=cfg.pool, layer=cfg.layer, rc_average=bool(cfg.rc_average),
                       model_dir=str(cfg.model), checkpoint_sha256=sha,
                       model_config=model.config.to_dict())


class _Job:
    """What every window length is fitted with: the config, the probe's model and the genomes."""

    def __init__(self, cfg: ClassifyConfig, model, model_spec, cache: GenomeCache):
        self.cfg, self.model, self.model_spec, self.cache = cfg, model, model_spec, cache

    def fit(self, segs, windows: dict, finetune: bool) -> dict:
        """{"kmer", "model"?, "finetuned"?: result entry} on `windows`."""
        cfg = self.cfg
        res = fit_eval(windows, self.cache, self.model, self.model_spec, cfg.seed, cfg.kmer_ks)
        if finetune:
            from .finetune import fit_eval_finetuned

            res["finetuned"] = fit_eval_finetuned(cfg.model, segs, windows, self.cache, cfg.finetune,
                                                  rc_average=bool(cfg.rc_average), device=cfg.device)
        return res


def _main_windows(cfg: ClassifyConfig, segs) -> dict:
    wins = draw_windows(segs, cfg.window, cfg.per_class, 1 << 62, cfg.seed)
    if wins is None:
        raise InputError(f"window {cfg.window} bp: some class has no {cfg.split_by} segment "
                         "that long in every split (train, val, test)",
                         hint="use a shorter --window, or --split-by block with a smaller --block")
    log.info(f"window {cfg.window}: " + ", ".join(f"{sp} {len(w)}" for sp, w in wins.items())
             + f" windows ({cfg.split_by} split, balanced)")
    return wins


def _save_classifiers(cfg: ClassifyConfig, res: dict, out: Path) -> dict:
    """OUT/NAME/ classifier + confusion_NAME.png per result; the report's "results"."""
    extra = {"window": cfg.window, "labels_table": str(cfg.labels), "label_column":
             cfg.label_column if not cfg.label_from_record else f"record ~ {cfg.label_from_record}",
             "group": cfg.group, "split_by": cfg.split_by}
    results = {}
    for name, r in res.items():
        extra_n = {**extra, "test_metrics": r["metrics"], "val_accuracy": r["val_accuracy"]}
        r["clf"].save(out / name, r["spec"], extra_n)
        confusion_png(r["metrics"], out / f"confusion_{name}.png",
                      f"{r['spec'].name} ({cfg.window} bp windows)")
        results[name] = {"features": r["spec"].name, **r["metrics"]}
    return results


def _length_table(job: _Job, sources, segs, wins: dict, res: dict, n_classes: int) -> list[dict]:
    """Accuracy vs window length: one row per length, the split redrawn for each."""
    cfg = job.cfg
    table = []
    for L in cfg.lengths or DEFAULT_LENGTHS:
        if L > cfg.max_length:
            break
        # blocks at least as long as the window: the split is redrawn for each length
        segs_L = segs if L <= (cfg.block or cfg.window) else make_segments(
            sources, split_by=cfg.split_by, window=L, block=L, seed=cfg.seed)
        w = draw_windows(segs_L, L, cfg.per_class, cfg.bp_per_class, cfg.seed) if L != cfg.window else wins
        if w is None:
            log.info(f"window {L}: genomes too short for disjoint train/val/test windows; stop")
            break
        tuned = cfg.finetune is not None and cfg.finetune.table
        r = res if L == cfg.window else job.fit(segs_L, w, finetune=tuned)
        row = {"window": L, "n_train_per_class": len(w["train"]) // n_classes,
               "n_test_per_class": len(w["test"]) // n_classes}
        for name in ("model", "finetuned", "kmer"):
            if name in r:
                row[f"{name}_accuracy"] = r[name]["metrics"]["accuracy"]
                row[f"{name}_balanced_accuracy"] = r[name]["metrics"]["balanced_accuracy"]
                row[f"{name}_seconds"] = round(r[name]["seconds"], 1)
        row["kmer_k"] = r["kmer"]["spec"].k
        table.append(row)
        log.info(f"window {L}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in row.items() if k != "window"))
    return table
