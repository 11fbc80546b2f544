"""End-to-end fine-tuning for `mamba-dna classify train --finetune`: a pretrained backbone
plus a linear head on its final hidden state, trained with the Mamba paper's Great Apes
recipe.

Setup: load the backbone (`mamba_dna.load.load_model`), put a linear head on the hidden state
after the final norm, pooled at the last token for a causal backbone (the paper's head) or
averaged over positions for a bidirectional one (CaduceusLM: its last position is no summary
of the sequence, so "last" is refused; a Caduceus-PS head reads the mean of its two RC
halves, d_model strand-symmetric channels, as Caduceus's own classifier does), and fix the
length ladder: sequence-length warmup trains first on short windows and doubles the window
stage by stage up to the target length (`stage_lengths`).

Run: every stage draws fresh balanced windows of its length from the *train* segments of
the classify split only (no window crosses into val or test), each flipped to its reverse
complement with probability 1/2; AdamW (decay on matrices only), linear lr warmup then
cosine decay over all steps, gradient-norm clipping, and the model's gradient checkpointing
switched on for long windows (>= 2^14 bp by default). Test: the caller evaluates on the
same test windows as the linear probe and the k-mer baseline.

Save: a directory that `classify predict` / `evaluate` load without pickle:

    backbone/           the backbone's save_pretrained (MambaLM or CaduceusLM config.json,
                        model.safetensors, ...)
    head.safetensors    head.weight (K, d_model), head.bias (K,)
    config.json         FinetuneConfig (the recipe)
    classifier.json     format "mamba-dna-finetuned", label set, window, sha256 of both
                        weight files (checked on load), test metrics
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mamba_dna import log
from mamba_dna.device import resolve_device
from mamba_dna.errors import InputError
from mamba_dna.fsutil import atomic_dir, read_json_object, sha256_file, write_json
from mamba_dna.pipelines.embed.arch import architecture, check_pool, is_bidirectional, is_rcps
from mamba_dna.tokenizer import reverse_complement
from mamba_dna.training import length_ladder, param_groups, steps_per_stage, warmup_cosine

from .config import CKPT_AUTO_FROM, FinetuneConfig
from .data import sample_windows, window_tokens
from .report import metrics

FORMAT = "mamba-dna-finetuned"


def stage_lengths(window: int, cfg: FinetuneConfig) -> list[int]:
    """The length ladder ending at `window`: the explicit warmup lengths below it, else
    doubling from min(warmup_start, window), e.g. 1024, 2048, ..., window."""
    if cfg.warmup_lengths is not None:
        return [x for x in cfg.warmup_lengths if x < window] + [window]
    return length_ladder(cfg.warmup_start, window)


def lr_factor(step: int, total: int, cfg: FinetuneConfig) -> float:
    """Linear warmup over lr_warmup * total steps, then cosine decay to min_lr_ratio."""
    return warmup_cosine(step, total, int(cfg.lr_warmup * total), cfg.min_lr_ratio)


def _load_backbone(model_dir: str | os.PathLike, device: torch.device):
    """The pretrained backbone in `model_dir` (the one place this module loads a model)."""
    from mamba_dna.load import load_model

    return load_model(model_dir, map_location=device)


# --------------------------------------------------------------------------- the network


def default_pool(backbone) -> str:
    """The head's pooling when none is asked for: last token (causal), mean (bidirectional)."""
    return "mean" if is_bidirectional(backbone) else "last"


class SequenceClassifier(nn.Module):
    """Backbone -> hidden state after the final norm -> pooled -> linear head.

    A causal MambaLM: (h, state) = hidden(ids). A CaduceusLM: h = hidden(ids), for PS with
    rc_average (the mean of its two halves: d_model strand-symmetric channels, one pass).
    """

    def __init__(self, backbone, n_classes: int, pool: str | None = None):
        super().__init__()
        self.backbone = backbone  # a MambaLM or CaduceusLM (its lm_head is unused here)
        self.pool = pool or default_pool(backbone)
        check_pool(backbone, self.pool, "--finetune-pool")
        self.bidirectional = is_bidirectional(backbone)
        self.halves = is_rcps(backbone)  # PS: average the two RC halves (embed's rc_average)
        d = backbone.config.d_model
        self.head = nn.Linear(d, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """ids (batch, L) int64, right-padded; lengths (batch,) -> logits (batch, K) fp32."""
        B, L = ids.shape
        if lengths is None:
            lengths = torch.full((B,), L, dtype=torch.int64, device=ids.device)
        lengths = lengths.to(ids.device)
        if self.bidirectional:
            if bool((lengths != L).any()):  # right padding would reach every position
                raise ValueError("a bidirectional backbone needs equal-length windows (no padding)")
            h = self.backbone.hidden(ids, rc_average=self.halves)  # (batch, L, d_model)
        else:
            h, _ = self.backbone.hidden(ids)  # (batch, L, d_model); causal: padding never leaks back
        if self.pool == "last":
            pooled = h[torch.arange(B, device=ids.device), lengths - 1]  # (batch, d_model)
        else:
            mask = torch.arange(L, device=ids.device)[None] < lengths[:, None]  # (batch, L)
            pooled = (h * mask[..., None]).sum(1) / lengths[:, None]  # (batch, d_model)
        return self.head(pooled.to(self.head.weight.dtype)).float()  # (batch, K)


# --------------------------------------------------------------------------- the classifier


class FinetunedClassifier:
    """A fine-tuned network with its label set: token arrays in, class probabilities out."""

    def __init__(self, net: SequenceClassifier, classes: Sequence[str], *, window: int,
                 rc_average: bool = False, eval_batch: int = 16):
        self.net = net
        self.classes = np.asarray(list(classes)).astype(str)  # (K,)
        self.window = int(window)
        self.rc_average = rc_average
        self.eval_batch = eval_batch

    @torch.no_grad()
    def predict_proba(self, seqs: Sequence[np.ndarray], piece: int = 1 << 15) -> np.ndarray:
        """(n, K) float64; with rc_average, the mean of both strands' probabilities.

        The backbone runs through `embed_batch` (the code of `mamba-dna embed`): for a causal
        one in pieces of `piece` positions with the state carried, so a megabase window costs
        one piece's memory; it gives the pooled vector of the training forward pass."""
        from mamba_dna.pipelines.embed import embed_batch, make_batches

        self.net.eval()
        head = self.net.head
        out = np.zeros((len(seqs), len(self.classes)), np.float64)
        n_tok = self.eval_batch * max(len(s) for s in seqs) if len(seqs) else 1
        for rows in make_batches([len(s) for s in seqs], n_tok, self.eval_batch):
            strands = [[seqs[r] for r in rows]]
            if self.rc_average:
                strands.append([reverse_complement(np.asarray(seqs[r])) for r in rows])
            for batch in strands:
                pooled = embed_batch(self.net.backbone, batch, pool=self.net.pool,
                                     rc_average=self.net.halves, piece=piece)  # (b, d_model) float32
                x = torch.from_numpy(pooled).to(head.weight.device, head.weight.dtype)
                p = torch.softmax(head(x).float(), -1)  # (b, K)
                out[rows] += p.double().cpu().numpy() / len(strands)
        return out

    def predict(self, seqs: Sequence[np.ndarray]) -> np.ndarray:
        return self.classes[np.argmax(self.predict_proba(seqs), 1)]

    # -- save / load

    def save(self, directory: str | os.PathLike, cfg: FinetuneConfig, extra: dict) -> None:
        """The directory described in the module docstring, written atomically as a whole."""
        from safetensors.torch import save_file

        bb = self.net.backbone
        ckpt = bb.config.gradient_checkpointing
        bb.config.gradient_checkpointing = False  # a training switch, not part of the model
        try:
            with atomic_dir(directory) as tmp:
                bb.save_pretrained(tmp / "backbone")
                head = {k: v.detach().cpu().contiguous() for k, v in self.net.head.state_dict().items()}
                save_file(head, str(tmp / "head.safetensors"), metadata={"format": "pt"})
                write_json(tmp / "config.json", asdict(cfg))
                write_json(tmp / "classifier.json", {
                    "format": FORMAT, "format_version": 1,
                    "classifier": f"{type(bb).__name__} backbone + linear head on the "
                                  f"{self.net.pool}-pooled final hidden state"
                                  f"{' (RC halves averaged)' if self.net.halves else ''}, "
                                  "fine-tuned end to end",
                    "architecture": architecture(bb),
                    "labels": self.classes.tolist(), "window": self.window,
                    "pool": self.net.pool, "rc_average": self.rc_average,
                    "head_sha256": sha256_file(tmp / "head.safetensors"),
                    "backbone_sha256": sha256_file(tmp / "backbone" / "model.safetensors"),
                    **extra,
                })
        finally:
            bb.config.gradient_checkpointing = ckpt

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu"
             ) -> tuple[FinetunedClassifier, dict]:
        from safetensors.torch import load_file

        d = Path(directory)
        man = read_json_object(d / "classifier.json", "a fine-tuned classifier directory holds "
                               "classifier.json")
        if man.get("format") != FORMAT:
            raise InputError(f"{d / 'classifier.json'}: format {man.get('format')!r} is not {FORMAT}")
        for f, key in (("head.safetensors", "head_sha256"),
                       ("backbone/model.safetensors", "backbone_sha256")):
            if not (d / f).exists():
                raise InputError(f"{d / f}: missing (a fine-tuned classifier holds backbone/ and "
                                 "head.safetensors)")
            if sha256_file(d / f) != man.get(key):
                raise InputError(f"{d / f}: sha256 does not match classifier.json; refusing to "
                                 "load it", hint="the file was changed after training; train again")
        backbone = _load_backbone(d / "backbone", device)
        labels = [str(x) for x in man["labels"]]
        net = SequenceClassifier(backbone, len(labels), man.get("pool", "last"))
        head = load_file(str(d / "head.safetensors"), device=str(device))
        want = {k: tuple(v.shape) for k, v in net.head.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in head.items()}
        if got != want:
            raise InputError(f"{d / 'head.safetensors'}: tensors {got}, expected {want} "
                             f"({len(labels)} labels, d_model {backbone.config.d_model})")
        net.head.load_state_dict(head)
        net.to(device).eval()
        cfg = read_json_object(d / "config.json", "the fine-tuning recipe")
        return cls(net, labels, window=int(man["window"]), rc_average=bool(man.get("rc_average")),
                   eval_batch=int(cfg.get("eval_batch", 16))), man


# --------------------------------------------------------------------------- training


def finetune(model_dir: str | os.PathLike, segs: Sequence, classes: Sequence[str], window: int,
             cfg: FinetuneConfig, cache, *, rc_average: bool = False,
             device: str = "auto") -> FinetunedClassifier:
    """Fine-tune a fresh copy of the backbone in `model_dir` on windows drawn from the train
    segments of `segs` (classify.data.Segment), with the length ladder ending at `window`."""
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, window])
    backbone = _load_backbone(model_dir, dev)
    net = SequenceClassifier(backbone, len(classes), cfg.pool).to(dev)  # pool None: default_pool
    net.train()
    index = {c: i for i, c in enumerate(classes)}
    opt = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    lengths = stage_lengths(window, cfg)
    n_steps = steps_per_stage(cfg.steps, len(lengths))
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))
    log.info(f"fine-tune {backbone.name} ({backbone.num_parameters():,} params) + "
             f"{net.pool}-pooled head on {len(classes)} classes: stages "
             + ", ".join(f"{L} bp x {s}" for L, s in zip(lengths, n_steps, strict=True))
             + f" steps, batch {cfg.batch_size}")
    step = 0
    with log.progress("fine-tune", total=cfg.steps, unit="steps") as prog:
        for stage, (L, n) in enumerate(zip(lengths, n_steps, strict=True)):
            if n == 0:
                continue
            backbone.config.gradient_checkpointing = (
                cfg.grad_checkpointing == "on"
                or (cfg.grad_checkpointing == "auto" and L >= CKPT_AUTO_FROM))
            seen, correct, loss_sum = 0, 0, 0.0
            for ids, y in _stage_batches(segs, stage, L, n, cfg, cache, rng, index, dev):
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg)
                with autocast:
                    logits = net(ids)  # (batch, K)
                loss = nn.functional.cross_entropy(logits.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip > 0:
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
                opt.step()
                step += 1
                seen += len(y)
                correct += int((logits.argmax(1) == y).sum())
                loss_sum += loss.item() * len(y)
                prog.advance(1, note=f"{L} bp, loss {loss.item():.3f}")
            log.info(f"fine-tune stage {stage + 1}/{len(lengths)} ({L} bp, {n} steps): train loss "
                     f"{loss_sum / seen:.3f}, train accuracy {correct / seen:.3f}")
    backbone.config.gradient_checkpointing = False
    net.eval()
    return FinetunedClassifier(net, classes, window=window, rc_average=rc_average,
                               eval_batch=cfg.eval_batch)


def _stage_batches(segs: Sequence, stage: int, L: int, n: int, cfg: FinetuneConfig, cache,
                   rng: np.random.Generator, index: dict, dev: torch.device):
    """The `n` batches of one length stage: fresh balanced train windows of L bp, each on a
    random strand when rc_augment. Yields (ids (batch, L) int64, labels (batch,) int64)."""
    per_class = -(-n * cfg.batch_size // len(index))
    pool = sample_windows(segs, "train", L, per_class, seed=cfg.seed + 1 + stage)
    if pool is None:
        raise InputError(f"fine-tuning stage {L} bp: some class has no train segment "
                         "that long", hint="use shorter --warmup-lengths or --window")
    order = rng.permutation(len(pool))
    for i in range(n):
        rows = order[(i * cfg.batch_size + np.arange(cfg.batch_size)) % len(pool)]
        seqs = [cache.tokens(pool.file[r], pool.record[r], int(pool.start[r]),
                             int(pool.start[r]) + L) for r in rows]  # each (L,) uint8
        if cfg.rc_augment:
            seqs = [reverse_complement(s) if rng.random() < 0.5 else s for s in seqs]
        ids = torch.from_numpy(np.stack(seqs).astype(np.int64)).to(dev)  # (batch, L)
        y = torch.tensor([index[pool.label[r]] for r in rows], device=dev)  # (batch,)
        yield ids, y


def fit_eval_finetuned(model_dir: str | os.PathLike, segs: Sequence, windows: dict, cache,
                       cfg: FinetuneConfig, *, rc_average: bool = False,
                       device: str = "auto") -> dict:
    """Fine-tune on the train segments, evaluate on `windows`' val and test windows (the same
    ones the linear probe and the k-mer baseline are scored on): a classify result entry."""
    t0 = time.perf_counter()
    classes = sorted({str(s.label) for s in segs})
    window = windows["test"].window
    clf = finetune(model_dir, segs, classes, window, cfg, cache, rc_average=rc_average,
                   device=device)
    y_val = windows["val"].label.astype(str)
    y_test = windows["test"].label.astype(str)
    val_acc = float(np.mean(clf.predict(window_tokens(cache, windows["val"])) == y_val))
    pred = clf.predict(window_tokens(cache, windows["test"]))
    return {"spec": cfg, "clf": clf, "pred": pred, "metrics": metrics(y_test, pred, clf.classes),
            "val_accuracy": val_acc, "seconds": time.perf_counter() - t0}

