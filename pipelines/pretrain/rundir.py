"""The run directory: config.json, metrics.jsonl, checkpoints/ (last K step files + best.pt).

A new run directory gets config.json; an existing one is resumed with its own config."""

from __future__ import annotations

import json
from pathlib import Path

from mamba_dna import log
from mamba_dna import training as tr
from mamba_dna.errors import ConfigError, InputError

from .config import PretrainConfig

CKPT_DIR = "checkpoints"
CKPT_FORMAT = 1


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """Step checkpoints, oldest first (best.pt excluded)."""
    d = Path(run_dir) / CKPT_DIR
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def load_checkpoint(path: Path) -> dict:
    return tr.load_checkpoint(path, CKPT_FORMAT, "mamba-dna pretrain checkpoint")


def write_checkpoint(run_dir: Path, step: int, state: dict, best: bool, keep_last: int) -> Path:
    """step_XXXXXXXX.pt (and best.pt), then drop all but the last `keep_last` step files."""
    ck_dir = Path(run_dir) / CKPT_DIR
    path = ck_dir / f"step_{step:08d}.pt"
    tr.save_checkpoint(path, state)
    if best:
        tr.save_checkpoint(ck_dir / "best.pt", state)
    for old in checkpoint_paths(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def prepare_run(cfg: PretrainConfig, resume: bool) -> tuple[PretrainConfig, bool]:
    """(the config to run, whether a checkpoint is resumed)."""
    run = Path(cfg.out)
    cfg_path = run / "config.json"
    existing = cfg_path.exists() and checkpoint_paths(run)
    if resume and not cfg_path.exists():
        raise InputError(f"{run}: --resume given but there is no run here (no config.json)")
    if cfg_path.exists() and (resume or existing):
        saved = PretrainConfig.load(cfg_path)
        saved.out = str(run)
        given, kept, default = cfg.to_dict(), saved.to_dict(), PretrainConfig.defaults()
        # arch / objective: config_from_cli lends the run's own when not given, so any
        # difference was asked for (even `--arch mamba`, the default)
        differ = [k for k in given if k not in ("out", "inputs") and given[k] != kept[k]
                  and (given[k] != default.get(k) or k == "arch")]
        if differ:
            log.info(f"resuming {run}: its config.json wins; ignoring changed option(s) "
                     f"{', '.join(differ)} (start a new --out to change them)")
        return saved, bool(existing)
    if run.exists() and any(p for p in run.iterdir() if p.name != "config.json"):
        raise ConfigError(f"{run}: directory exists and is not a pretrain run",
                          hint="choose a new --out or remove the directory")
    cfg.objective = cfg.resolved_objective  # config.json says which objective ran
    return cfg, False


# --------------------------------------------------------------------------- metrics.jsonl


def append_metrics(run_dir: Path, row: dict) -> None:
    with open(Path(run_dir) / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def trim_metrics(run_dir: Path, step: int) -> None:
    """On resume: drop rows logged after the checkpoint (they will be recomputed)."""
    from mamba_dna.fsutil import atomic_path

    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    keep = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x).get("step", 0) <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(k + "\n" for k in keep))
