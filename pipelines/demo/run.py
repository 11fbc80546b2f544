"""`mamba-dna demo`: setup (data, output directory) -> the stages in order -> save (report.md,
summary.json)."""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mamba_dna import __version__, log
from mamba_dna.errors import ConfigError
from mamba_dna.fsutil import write_json

from .config import OUTPUTS, DemoConfig
from .data import find_data
from .report import headline, write_report
from .stages import stage_classify, stage_embed, stage_pretrain, stage_score, stage_tokenize


class _Stages:
    """Wall-clock and CPU seconds per stage (CPU: all threads of this process; on a shared
    machine wall time depends on the load, CPU time much less)."""

    def __init__(self, total: int):
        self.total = total
        self.t0, self.c0 = time.time(), time.process_time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.n = 0

    def start(self, name: str, what: str) -> tuple[float, float]:
        self.n += 1
        log.info(f"[{self.n}/{self.total}] {name}: {what}")
        return time.time(), time.process_time()

    def done(self, name: str, t: tuple[float, float]) -> None:
        self.seconds[name] = round(time.time() - t[0], 1)
        self.cpu_seconds[name] = round(time.process_time() - t[1], 1)
        log.info(f"{name}: done in {self.seconds[name]:.1f}s (CPU {self.cpu_seconds[name]:.1f}s; "
                 f"{time.time() - self.t0:.0f}s in all)")


def _machine() -> str:
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    try:
        load = f", load average {os.getloadavg()[0]:.1f}"
    except OSError:
        load = ""
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores "
            f"({threads} torch threads{load}), {dev}, torch {torch.__version__}")


def _given_model(spec: str) -> dict:
    """What the report says about a --model DIR|hf:ID (no pretraining ran)."""
    from mamba_dna.load import load_model, model_dir

    m = load_model(spec)
    c = m.config
    kind = ("Caduceus-PS" if c.rcps else "Caduceus-Ph / BiMamba") if getattr(c, "bidirectional", False) else "Mamba LM"
    return {"spec": spec, "model_dir": str(model_dir(spec)), "kind": kind,
            "masked": getattr(m, "is_causal", True) is False, "d_model": c.d_model, "n_layer": c.n_layer,
            "parameters": sum(p.numel() for p in m.parameters())}


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage, write OUT/report.md and OUT/summary.json; return the results.

    With cfg.model (DIR or hf:ID): no tokenize / pretrain stages; score, embed and classify
    run with that model (a masked one is scored by MLM_LLR beside the two-sided k-mer model)."""
    given = cfg.model is not None
    stages = _Stages(4 if given else (7 if cfg.mlm else 6))
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

    if given:
        res["model"] = _given_model(cfg.model)
        model_dir = res["model"]["model_dir"]
        log.info(f"demo: --model {cfg.model} ({res['model']['kind']}, {res['model']['parameters']:,} "
                 "parameters): tokenize and pretrain skipped")
        t = stages.start("score", "SARS-CoV-2 fitness and human mtDNA variants, the given model vs baselines")
        res["score"] = stage_score(cfg, data, model_dir, None, 0, out / "score",
                                   model_label=res["model"]["kind"])
        stages.done("score", t)
    else:
        t = stages.start("tokenize", "virus + mitochondrial genomes -> shards")
        res["tokenize"] = stage_tokenize(cfg, data, out / "shards")
        stages.done("tokenize", t)

        t = stages.start("pretrain", "a small Mamba LM; validation bits/base beside the Markov baseline")
        res["pretrain"] = stage_pretrain(cfg, out / "shards", out / "pretrain")
        stages.done("pretrain", t)
        model_dir = Path(res["pretrain"]["model_dir"])

        if cfg.mlm:
            t = stages.start("pretrain-mlm", "a masked Caduceus-PS on the same windows; masked bits/base "
                             "beside the two-sided k-mer baseline")
            res["pretrain_mlm"] = stage_pretrain(cfg, out / "shards", out / "pretrain_mlm", arch="caduceus-ps")
            stages.done("pretrain-mlm", t)

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

