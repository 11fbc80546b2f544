"""The pretraining recipe as a class: `Pretrainer(cfg).run()` = setup() -> train() -> save().

Determinism: the global batch of step s (which windows, which strand, and for mlm which
positions are masked and how) is a function of (seed, s) only, every rank takes its slice
of it, and the loss is normalised by the global count of scored bases. So 1 process or N processes with the same global batch follow the
same trajectory (to fp32 reduction order), and a checkpoint written with N ranks resumes
on M ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mamba_dna import distributed as mdist
from mamba_dna import log
from mamba_dna import training as tr
from mamba_dna.errors import ConfigError, MambaDNAError
from mamba_dna.fsutil import atomic_dir, output_lock, write_json

from .config import PretrainConfig
from .data import eval_indices, load_data, make_batch, make_mlm_batch, strand_flips
from .evaluate import evaluate as windows_nll
from .evaluate import evaluate_masked
from .markov import LN2, kmer2_baseline, markov_baseline
from .report import plot_curves
from .rundir import (
    CKPT_DIR,
    CKPT_FORMAT,
    append_metrics,
    checkpoint_paths,
    load_checkpoint,
    prepare_run,
    read_metrics,
    trim_metrics,
    write_checkpoint,
)


def build_model(cfg: PretrainConfig):
    """MambaLM for --arch mamba; CaduceusLM (bidirectional; rcps for caduceus-ps) otherwise."""
    from mamba_dna.model import MambaConfig, MambaLM

    mdict = dict(cfg.model)
    mdict["gradient_checkpointing"] = bool(cfg.grad_checkpointing)
    if not cfg.bidirectional:
        return MambaLM(MambaConfig.from_dict(mdict, where="pretrain model config"))
    from mamba_dna.caduceus import CaduceusLM, ModelConfig

    # bimamba and caduceus-ph are one network (Ph = RC augmentation + post-hoc conjoining)
    mdict.update(bidirectional=True, rcps=cfg.arch == "caduceus-ps")
    return CaduceusLM(ModelConfig.from_dict(mdict, where="pretrain model config"))


def _logits(out) -> torch.Tensor:
    """MambaLM returns (logits, state), CaduceusLM the logits."""
    return out[0] if isinstance(out, tuple) else out


@dataclass
class PretrainResult:
    """What a run ended with (RUN/summary.json holds `to_dict()` of a finished run)."""

    run_dir: str
    step: int
    steps: int
    tokens: int
    skipped_steps: int
    world_size: int
    best_val_bits_per_base: float | None  # clm: bits/base; mlm: masked bits/base
    markov: dict | None  # clm: the Markov baseline (baseline.json)
    stopped_by: str | None  # None: finished; else the signal or "--stop-at N"
    final_val_bits_per_base: float | None = None
    train_tokens_per_s: float | None = None
    parameters: int | None = None
    arch: str = "mamba"
    objective: str = "clm"
    kmer2: dict | None = None  # mlm: the two-sided k-mer baseline (baseline.json)

    def to_dict(self) -> dict:
        return asdict(self)


class Pretrainer:
    """Train (or resume) the run in `cfg.out`.

    Stops early, with a checkpoint, after step `stop_at` or at the first step boundary after
    SIGTERM/SIGINT/SIGUSR1/SIGUSR2 (`result.stopped_by` says which). `on_step(step, info)`
    is called after every optimizer step (tests, notebooks, the demo's deadline).
    """

    def __init__(self, cfg: PretrainConfig, *, resume: bool = False, stop_at: int | None = None,
                 stop: mdist.StopFlag | None = None,
                 on_step: Callable[[int, dict], None] | None = None):
        if stop_at is not None and stop_at < 1:
            raise ConfigError(f"--stop-at {stop_at}: expected a step >= 1")
        self.cfg, self.resume, self.stop_at, self.on_step = cfg, resume, stop_at, on_step
        self._lock = contextlib.ExitStack()  # rank 0 holds the run directory's lock
        self._own_stop = stop is None
        self.stop = stop or mdist.StopFlag()
        self.step, self.tokens, self.best_val = 0, 0, float("inf")
        self.bad_in_row, self.skipped = 0, 0  # non-finite steps: in a row, in all
        self.stopped_by: str | None = None
        self.log_acc = {"loss": 0.0, "n": 0, "gn": 0.0}  # sums for the next train metrics row

    def run(self) -> PretrainResult:
        try:
            if self._own_stop:
                self.stop.install()
            self.setup()
            self.train()
            return self.save()
        finally:
            self._lock.close()
            if self._own_stop:
                self.stop.restore()
            mdist.teardown()

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Process group, run directory, data, model, optimizer, resume, Markov baseline."""
        self.denv, self.device = mdist.setup(self.cfg.device)
        self.main, self.world = self.denv.is_main, self.denv.world_size
        self.cfg, resuming = self._prepare_run_dir()
        cfg, self.run_dir = self.cfg, Path(self.cfg.out)
        self.per_rank = self._windows_per_rank()
        self.use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        tr.seed_all(cfg.seed + self.denv.rank)
        self.train_data, self.val_data = load_data(cfg)
        self.eval_idx = eval_indices(len(self.val_data), cfg.eval_windows)
        self.my_eval = self.eval_idx[self.denv.rank :: self.world]
        self.sampler = self._sampler()
        self.model = build_model(cfg).to(self.device)
        self.ddp_model = self.model
        if self.denv.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = torch.optim.AdamW(tr.param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                     betas=(cfg.beta1, cfg.beta2), eps=1e-8)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: cfg.lr_factor(s))
        if resuming:
            self._load_last_checkpoint()
        self.mlm = cfg.resolved_objective == "mlm"
        self.baseline = self._baseline()
        self.n_params = sum(p.numel() for p in self.model.parameters())
        if self.main and not resuming:
            log.info(f"pretrain: {self.n_params:,} parameters, {len(self.train_data):,} train / "
                     f"{len(self.val_data):,} val windows of {cfg.seq_len} bp, global batch "
                     f"{cfg.batch_size} x {cfg.seq_len} bp, {self.world} process(es) on {self.device}, "
                     f"{'bf16 autocast' if self.use_bf16 else 'fp32'}")

    def _prepare_run_dir(self) -> tuple[PretrainConfig, bool]:
        """Rank 0 decides (new run or resume) and tells the others; config.json written."""
        prepared: tuple = (None, None, None)
        if self.main:
            try:
                # one process per run directory: a second gets "in use by pid N"
                self._lock.enter_context(output_lock(self.cfg.out))
                prepared = (*prepare_run(self.cfg, self.resume), None)
            except MambaDNAError as e:
                prepared = (None, None, e)
        cfg, resuming, err = mdist.broadcast_object(prepared)
        if err is not None:
            raise err
        if self.main:
            Path(cfg.out).mkdir(parents=True, exist_ok=True)
            write_json(Path(cfg.out) / "config.json", cfg.to_dict())
        return cfg, resuming

    def _windows_per_rank(self) -> int:
        cfg, world = self.cfg, self.world
        if cfg.batch_size % world:
            raise ConfigError(f"pretrain: --batch-size {cfg.batch_size} (global) is not divisible by "
                              f"{world} processes", hint=f"use a multiple of {world}")
        per_rank = cfg.batch_size // world
        rows_max = cfg.seq_len // cfg.stage_lengths()[0]  # rows per window at the shortest length
        if (per_rank * rows_max) % cfg.grad_accum:
            raise ConfigError(f"pretrain: {per_rank} windows per rank (x{rows_max} rows in warmup) do "
                              f"not split into --grad-accum {cfg.grad_accum} micro-batches")
        return per_rank

    def _sampler(self):
        """One global stream of batches; every rank takes its slice (world-size independent state)."""
        from mamba_dna.shards import ResumableSampler

        cfg, n = self.cfg, len(self.train_data)
        sampler = ResumableSampler(n, cfg.batch_size, seed=cfg.seed, rank=0, world_size=1,
                                   shuffle=True, drop_last=True)
        if len(sampler) == 0:
            raise ConfigError(f"pretrain: global batch of {cfg.batch_size} windows but only {n} "
                              f"training windows of {cfg.seq_len} bp", hint="lower --batch-size or --seq-len")
        return sampler

    def _load_last_checkpoint(self) -> None:
        cfg, rank = self.cfg, self.denv.rank
        ck_path = checkpoint_paths(self.run_dir)[-1]
        ck = load_checkpoint(ck_path)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.sampler.load_state_dict(tr.from_weights_only(ck["sampler"]))
        self.step, self.tokens = int(ck["step"]), int(ck["tokens"])
        self.best_val, self.skipped = float(ck["best_val"]), int(ck["skipped_steps"])
        if ck.get("world_size") == self.world:
            tr.set_rng_state(ck["rng"][f"rank{rank}"])
        else:  # another world size: data order and strands do not depend on these streams
            tr.seed_all(cfg.seed + rank + 7919 * self.step)
        if "log_acc" in ck:
            self.log_acc = {k: type(v)(ck["log_acc"][k]) for k, v in self.log_acc.items()}
        if self.main:
            trim_metrics(self.run_dir, self.step)
            log.info(f"resumed {self.run_dir} from {ck_path.name} (step {self.step}/{cfg.steps}, world "
                     f"size {ck.get('world_size', '?')} -> {self.world})")

    def _baseline(self) -> dict | None:
        """The bar on the same validation windows (rank 0 fits it once per run): clm the best
        Markov model, mlm the two-sided k-mer model at the same masked positions."""
        cfg, path, baseline = self.cfg, self.run_dir / "baseline.json", None
        if self.main:
            if path.exists():
                baseline = json.loads(path.read_text())
            elif self.eval_idx and self.mlm:
                log.info("fitting the two-sided k-mer baseline (k and smoothing chosen on the masked "
                         "validation positions)")
                baseline = kmer2_baseline(cfg, self.train_data, self.val_data, self.eval_idx)
                write_json(path, baseline)
                log.info(f"baseline: {baseline['name']} {baseline['masked_bits_per_base']:.4f} masked "
                         f"bits/base on {baseline['val_targets']:,} masked validation bases")
            elif self.eval_idx:
                log.info(f"fitting the Markov baseline (orders {cfg.markov_orders[0]}..{cfg.markov_orders[-1]}, "
                         "order chosen on validation)")
                baseline = markov_baseline(cfg, self.train_data, self.val_data, self.eval_idx)
                write_json(path, baseline)
                log.info(f"baseline: {baseline['name']} {baseline['bits_per_base']:.4f} bits/base on "
                         f"{baseline['val_bases']:,} validation bases")
        return mdist.broadcast_object(baseline)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    # ------------------------------------------------------------------ train

    def train(self) -> None:
        """Optimizer steps up to cfg.steps, or until a stop request."""
        cfg = self.cfg
        self.model.train()
        self.ddp_model.train()
        self._t_log, self._tok_log, self._last_ck_step = time.time(), 0, self.step
        batches = self._global_batches()
        with log.progress("pretrain", total=cfg.steps, unit="step", enabled=self.main) as bar:
            if self.step:
                bar.advance(self.step)
            while self.step < cfg.steps:
                L = cfg.seq_len_at(self.step)
                loss, grad_norm, finite = self.train_step(next(batches), L)
                self.step += 1
                bar.advance(1, note=f"{loss / LN2:.3f} bits/base, L={L}")
                self._after_step(L, loss, grad_norm, finite)
                if self._should_stop():
                    break

    def _global_batches(self) -> Iterator[list[int]]:
        """Global window indices of each step, epoch after epoch."""
        while True:
            for idx in self.sampler:
                yield list(idx)  # (batch_size,)

    def train_step(self, idx: list[int], L: int) -> tuple[float, float, bool]:
        """One optimizer step on this rank's slice of the global batch `idx`, cut to length L.

        Returns (loss in nats per scored base over all ranks, gradient norm, finite)."""
        cfg, rank = self.cfg, self.denv.rank
        flips = strand_flips(self.step, len(idx), cfg.seed, cfg.rc_augment)  # (batch_size,)
        mine = slice(rank * self.per_rank, (rank + 1) * self.per_rank)
        if self.mlm:  # masks drawn per (seed, step, slot in the global batch)
            slots = list(range(len(idx)))[mine]
            inp, tgt, w = make_mlm_batch(self.train_data, idx[mine], slots, flips[mine], L, self.step,
                                         self.device, cfg)  # (rows, L) each
        else:
            inp, tgt, w = make_batch(self.train_data, idx[mine], flips[mine], L, self.device, cfg.softmask_weight)
            # inp, tgt, w: (rows, L-1); rows = per_rank * seq_len / L
        loss, scored = self._backward(inp, tgt, w)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        finite = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
        finite = not mdist.any_rank(not finite, self.device)
        if finite and scored > 0:
            self.opt.step()
            self.bad_in_row = 0
        elif not finite:
            self._skip_step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        return loss, float(grad_norm), finite

    def _backward(self, inp, tgt, w) -> tuple[float, float]:
        """Gradients of sum(weight * CE) / (scored bases over all ranks), in grad_accum
        micro-batches. Returns (that loss, scored bases over all ranks).

        clm: targets are the next bases. mlm: targets are mlm.IGNORE (-100, cross_entropy's
        ignore_index, weight 0) except at the chosen positions, so the loss is mlm.mlm_loss
        (full-vocabulary CE, weighted mean over the chosen positions) over the global batch."""
        cfg = self.cfg
        scored = mdist.all_reduce_sum(w.sum().double().reshape(1)).item()
        micro = inp.shape[0] // cfg.grad_accum
        nats_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i in range(cfg.grad_accum):
            part = slice(i * micro, (i + 1) * micro)
            defer_sync = self.denv.distributed and i < cfg.grad_accum - 1
            with self.ddp_model.no_sync() if defer_sync else contextlib.nullcontext():
                with self.autocast():
                    logits = _logits(self.ddp_model(inp[part]))  # (micro, L-1 | L, vocab)
                ce = F.cross_entropy(logits.float().flatten(0, 1), tgt[part].flatten(), reduction="none")
                nats = (ce * w[part].flatten()).sum()  # weighted
                # DDP averages gradients over ranks: scale so the result is sum / scored.
                (nats * (self.world / max(scored, 1.0))).backward()
            nats_sum += nats.detach().double()
        loss = mdist.all_reduce_sum(nats_sum.reshape(1)).item() / max(scored, 1.0)
        return loss, scored

    def _skip_step(self) -> None:
        self.bad_in_row += 1
        self.skipped += 1
        if self.main:
            log.info(f"step {self.step}: non-finite loss or gradient; step skipped "
                     f"({self.bad_in_row} in a row, {self.skipped} in all)")
        if self.bad_in_row >= self.cfg.max_bad_steps:
            raise MambaDNAError(
                f"pretrain: {self.bad_in_row} non-finite losses in a row at step {self.step}; stopping "
                f"(last good checkpoint in {self.run_dir / CKPT_DIR})",
                hint="lower --lr, raise --warmup-steps or use --precision fp32",
            )

    def _after_step(self, L: int, loss: float, grad_norm: float, finite: bool) -> None:
        """Bookkeeping after step `self.step`: metrics row, evaluation, checkpoint, callback."""
        cfg, step = self.cfg, self.step
        step_tokens = cfg.batch_size * cfg.seq_len
        self.tokens += step_tokens
        self._tok_log += step_tokens
        if finite:
            self.log_acc["loss"] += loss
            self.log_acc["n"] += 1
            self.log_acc["gn"] += grad_norm
        last = step == cfg.steps
        if step % cfg.log_every == 0 or last:
            self._log_train_row(L)
        best = False
        if step % cfg.eval_every == 0 or last:
            row = self.evaluate()
            best = bool(row and row["improved"])
            if self.main:
                plot_curves(self.run_dir, self.baseline)
        if step % cfg.checkpoint_every == 0 or last or best:
            self.save_checkpoint(best=best)
            self._last_ck_step = step
        if self.on_step is not None:
            self.on_step(step, {"step": step, "loss": loss, "seq_len": L, "finite": finite,
                                "model": self.model})

    def _log_train_row(self, L: int) -> None:
        now, acc = time.time(), self.log_acc
        if self.main and acc["n"]:
            append_metrics(self.run_dir, {
                "step": self.step, "split": "train", "tokens": self.tokens,
                "loss": acc["loss"] / acc["n"], "bits_per_base": acc["loss"] / acc["n"] / LN2,
                "lr": self.sched.get_last_lr()[0], "seq_len": L, "grad_norm": acc["gn"] / acc["n"],
                "tokens_per_s": self._tok_log / max(now - self._t_log, 1e-9),
                "skipped_steps": self.skipped})
        self._t_log, self._tok_log = now, 0
        self.log_acc = {"loss": 0.0, "n": 0, "gn": 0.0}

    def _should_stop(self) -> bool:
        """Stop requested (signal, --stop-at) before the last step: checkpoint and stop."""
        if self.step >= self.cfg.steps:
            return False
        if self.stop_at is not None and self.step >= self.stop_at:
            self.stop.received = self.stop.received or f"--stop-at {self.stop_at}"
        if not self.stop.should_stop(self.device):
            return False
        self.stopped_by = self.stop.received or "a signal on another rank"
        if self._last_ck_step != self.step:
            self.save_checkpoint()
        return True

    def _validate(self, idx: list[int]) -> tuple[float, float]:
        """(sum, count) over validation windows `idx`: clm nats of every next base; mlm masked
        bits at the fixed masked positions."""
        cfg = self.cfg
        if self.mlm:
            return evaluate_masked(self.model, cfg, self.val_data, idx, cfg.eval_batch_size, self.device,
                                   self.autocast)
        return windows_nll(self.model, self.val_data, idx, cfg.eval_batch_size, self.device, self.autocast)

    def evaluate(self) -> dict | None:
        """Validation bits per base on this run's evaluation windows (all ranks together)."""
        if not self.eval_idx:
            return None
        t0 = time.time()
        total, cnt = self._validate(self.my_eval)
        red = mdist.all_reduce_sum(torch.tensor([total, cnt], dtype=torch.float64, device=self.device))
        row = self._val_row(float(red[0]), float(red[1]))
        row["eval_s"] = round(time.time() - t0, 2)
        improved = row["loss"] < self.best_val
        self.best_val = min(self.best_val, row["loss"])
        if self.main:
            append_metrics(self.run_dir, row)
            b = self.baseline
            if self.mlm:
                mk = f" (two-sided k-mer k={b['k']}: {b['masked_bits_per_base']:.4f})" if b else ""
                log.info(f"step {self.step}: validation {row['bits_per_base']:.4f} masked bits/base{mk}")
            else:
                mk = f" (best Markov order {b['order']}: {b['bits_per_base']:.4f})" if b else ""
                log.info(f"step {self.step}: validation {row['bits_per_base']:.4f} bits/base{mk}")
        row["improved"] = improved
        return row

    def _val_row(self, total: float, count: float) -> dict:
        b = self.baseline
        if self.mlm:  # total: masked bits; loss kept in nats like the clm rows
            bits = total / max(count, 1)
            return {"step": self.step, "split": "val", "tokens": self.tokens, "objective": "mlm",
                    "loss": bits * LN2, "bits_per_base": bits, "masked_bits_per_base": bits,
                    "masked_targets": int(count),
                    "kmer2_bits_per_base": b["masked_bits_per_base"] if b else None,
                    "kmer2_k": b["k"] if b else None}
        loss = total / max(count, 1)
        return {"step": self.step, "split": "val", "tokens": self.tokens, "loss": loss,
                "bits_per_base": loss / LN2, "val_bases": int(count),
                "markov_bits_per_base": b["bits_per_base"] if b else None,
                "markov_order": b["order"] if b else None}

    # ------------------------------------------------------------------ save

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """RUN/checkpoints/step_XXXXXXXX.pt (+ best.pt). Collective: every rank calls it."""
        state = self._checkpoint_state()
        if not self.main:
            return None
        if not tr.all_finite(self.model):
            log.info(f"step {self.step}: weights are not finite; checkpoint NOT written")
            return None
        return write_checkpoint(self.run_dir, self.step, state, best, self.cfg.keep_last)

    def _checkpoint_state(self) -> dict:
        rngs = mdist.gather_objects(tr.rng_state())  # collective
        return {
            "format": CKPT_FORMAT,
            "step": self.step,
            "tokens": self.tokens,
            "best_val": self.best_val,
            "skipped_steps": self.skipped,
            "world_size": self.world,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "sampler": tr.to_weights_only(self.sampler.state_dict()),
            "rng": {f"rank{r}": s for r, s in enumerate(rngs)},
            "log_acc": dict(self.log_acc),
            "config": self.cfg.to_dict(),
        }

    def save(self) -> PretrainResult:
        """A finished run: RUN/model and RUN/summary.json. A stopped one: how to resume."""
        mdist.barrier()
        cfg, run = self.cfg, self.run_dir
        result = PretrainResult(
            run_dir=str(run), step=self.step, steps=cfg.steps, tokens=self.tokens,
            skipped_steps=self.skipped, world_size=self.world,
            best_val_bits_per_base=self.best_val / LN2 if math.isfinite(self.best_val) else None,
            markov=None if self.mlm else self.baseline, stopped_by=self.stopped_by,
            parameters=self.n_params, arch=cfg.arch, objective=cfg.resolved_objective,
            kmer2=self.baseline if self.mlm else None)
        if self.stopped_by is not None:
            if self.main:
                log.info(f"stopped by {self.stopped_by} after step {self.step}/{cfg.steps}; checkpoint "
                         f"saved in {run / CKPT_DIR}. Resume with: mamba-dna pretrain --resume --out {run}")
                if self.stopped_by == "SIGUSR1":
                    note = mdist.slurm_requeue()
                    if note:
                        log.info(note)
            return result
        if self.main:
            rows = read_metrics(run)
            vals = [r for r in rows if r.get("split") == "val"]
            trs = [r for r in rows if r.get("split") == "train"]
            tps = [r["tokens_per_s"] for r in trs[1:]] or [r["tokens_per_s"] for r in trs]
            result.final_val_bits_per_base = vals[-1]["bits_per_base"] if vals else None
            result.train_tokens_per_s = float(np.median(tps)) if tps else None
            self.export()
            write_json(run / "summary.json", result.to_dict())
            log.info(f"done: model saved to {run / 'model'}")
        mdist.barrier()
        return result

    def export(self) -> Path:
        """RUN/model (save_pretrained: MambaLM, or CaduceusLM for a bidirectional arch) from the
        weights in memory; returns its path.

        A run stopped before cfg.steps is validated once first (a val row marked
        `stopped_early`, curves redrawn), so the exported model has a final figure. Call it on
        rank 0 after run() (or save()); it needs no process group.
        """
        run = self.run_dir
        if self.step < self.cfg.steps:
            log.info(f"exporting the weights of step {self.step} of {self.cfg.steps} and validating them")
            total, cnt = self._validate(self.eval_idx)
            append_metrics(run, {**self._val_row(total, cnt), "stopped_early": True})
            plot_curves(run, self.baseline)
        with atomic_dir(run / "model") as tmp:
            self.model.save_pretrained(tmp)
        return run / "model"


def run(cfg: PretrainConfig, *, resume: bool = False, stop_at: int | None = None,
        stop: mdist.StopFlag | None = None,
        on_step: Callable[[int, dict], None] | None = None) -> PretrainResult:
    """Train (or resume) the run `cfg.out`: setup -> train -> save (see Pretrainer)."""
    return Pretrainer(cfg, resume=resume, stop_at=stop_at, stop=stop, on_step=on_step).run()
