"""Seconds per optimizer step and per validation pass of a config's model on this machine
(the demo turns a wall-clock budget into a number of steps with it)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from mamba_dna.training import param_groups

from .config import PretrainConfig
from .data import BASE_HI, BASE_LO
from .trainer import build_model


def calibrate(cfg: PretrainConfig, device: torch.device) -> dict:
    """{"first_step_s", "step_s", "eval_s"} for cfg's model, batch and evaluation windows.

    Random bases: the cost does not depend on the content. The first step (kernel
    compilation, allocator warm-up) is timed apart.
    """
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    x = torch.randint(BASE_LO, BASE_HI + 1, (cfg.batch_size, cfg.seq_len), device=device)  # (B, L)

    mlm = cfg.resolved_objective == "mlm"

    def step() -> float:
        t = time.perf_counter()
        if mlm:  # the masked LM reads the whole window; the loss's cost is the same
            logits = model(x)  # (B, L, vocab)
            F.cross_entropy(logits.float().flatten(0, 1), x.flatten()).backward()
        else:
            logits, _ = model(x[:, :-1])  # (B, L-1, vocab)
            F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    first = step()
    per_step = float(np.mean([step() for _ in range(2)]))
    n_eval = min(cfg.eval_batch_size, len(x))
    t = time.perf_counter()
    with torch.no_grad():
        model.eval()
        model.masked_log_probs(x[:n_eval]) if mlm else model.log_probs(x[:n_eval])
    per_eval = (time.perf_counter() - t) * cfg.eval_windows / n_eval
    return {"first_step_s": first, "step_s": per_step, "eval_s": per_eval}
