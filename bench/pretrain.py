"""One pretraining step (forward + backward + clip + AdamW) on CPU: time and peak memory.

    python bench/pretrain.py [--lengths 16384,1048576] [--d-model 128] [--n-layer 2]
                             [--reps 2] [--peer-max-len 16384]

Each row runs in a fresh subprocess (so the peak resident memory is its own) and performs
`--reps` training steps on one window of L bases from the human chr20 window in
../shared/data (random bases when absent); the table gives the minimum step time and the
process's peak RSS. Rows: ours (the loss, clipping and AdamW groups of pipelines/pretrain.py),
with and without per-block gradient checkpointing, and transformers' `MambaForCausalLM`
(its slow path, no mamba_ssm on CPU) with the same width/depth as the peer, run only up to
`--peer-max-len` (its O(L * d_inner * d_state) intermediates make 2^20 infeasible here).
Timings are noisy on a shared machine: compare only rows of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
DATA = os.environ.get("MAMBA_DNA_DATA", os.path.join(_HERE, "..", "..", "shared", "data"))


def _window(L: int):
    import numpy as np

    path = os.path.join(DATA, "pretrain", "human_chr20_GRCh37_31000000-33000000.fa.gz")
    if os.path.exists(path):
        from mamba_dna.genome import Genome

        g = Genome(path)
        name = g.names[0]
        ids, _ = g.tokens(name, 0, min(L, g.lengths[name]))
        if len(ids) == L:
            return ids, "chr20 window"
    return np.random.default_rng(0).integers(4, 8, size=L).astype(np.uint8), "random bases"


def _child(impl: str, L: int, d_model: int, n_layer: int, reps: int, ckpt: bool) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    ids_np, src = _window(L)
    tok = torch.from_numpy(ids_np.astype("int64"))[None]  # (1, L)
    inp, tgt = tok[:, :-1], tok[:, 1:]  # (1, L-1)
    if impl == "ours":
        from mamba_dna.model import MambaConfig, MambaLM
        from mamba_dna.training import param_groups

        model = MambaLM(MambaConfig(d_model=d_model, n_layer=n_layer, gradient_checkpointing=ckpt))
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95))

        def fwd_on(x):
            return model(x)[0]  # (1, L-1, vocab)
    else:
        from transformers import MambaConfig as HFConfig
        from transformers import MambaForCausalLM

        model = MambaForCausalLM(HFConfig(vocab_size=16, hidden_size=d_model, num_hidden_layers=n_layer,
                                          state_size=16, expand=2, use_cache=False))
        if ckpt:
            model.gradient_checkpointing_enable()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))

        def fwd_on(x):
            return model(x).logits  # (1, L-1, vocab)
    model.train()
    warm = tok[:, :256]  # compile/JIT paths outside the timed steps
    F.cross_entropy(fwd_on(warm).float().flatten(0, 1), warm.flatten()).backward()
    opt.zero_grad(set_to_none=True)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        logits = fwd_on(inp)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        if times[-1] > 600:
            break
    return {"impl": impl, "L": L, "ckpt": ckpt, "min_s": min(times), "reps": len(times),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "src": src,
            "loss": float(loss), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="16384,1048576")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--peer-max-len", type=int, default=16384)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per row before giving up")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        impl, L, ck = a.child.split(":")
        print(json.dumps(_child(impl, int(L), a.d_model, a.n_layer, a.reps, ck == "1")))
        return
    try:
        import transformers  # noqa: F401

        have_peer = True
    except ImportError:
        have_peer = False
    import torch

    print(f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, model {a.n_layer} x d_model {a.d_model} (d_state 16, expand 2), "
          f"batch 1, fp32, one step = fwd + bwd + clip + AdamW; min of --reps {a.reps}")
    print(f"{'impl':<14}{'grad ckpt':>10}{'L':>10}{'step s':>10}{'tokens/s':>10}{'peak RSS GiB':>14}  note")
    for L in [int(x) for x in a.lengths.split(",")]:
        rows = [("ours", 0), ("ours", 1)]
        if have_peer:
            rows.append(("transformers", 0))
        for impl, ck in rows:
            if impl == "transformers" and L > a.peer_max_len:
                print(f"{impl:<14}{'no':>10}{L:>10}{'-':>10}{'-':>10}{'-':>14}  not run: slow path "
                      f"materialises (L, d_inner, d_state) tensors, ~{L * 2 * a.d_model * 16 * 4 / 2**30:.0f} GiB each")
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--child", f"{impl}:{L}:{ck}",
                   "--d-model", str(a.d_model), "--n-layer", str(a.n_layer), "--reps", str(a.reps)]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            except subprocess.TimeoutExpired:
                print(f"{impl:<14}{'yes' if ck else 'no':>10}{L:>10}{'-':>10}{'-':>10}{'-':>14}  "
                      f"not finished within --timeout {a.timeout:g} s", flush=True)
                continue
            if p.returncode != 0:
                err = (p.stderr.strip().splitlines() or ["?"])[-1][:80]
                print(f"{impl:<14}{'yes' if ck else 'no':>10}{L:>10}{'-':>10}{'-':>10}{'-':>14}  failed: {err}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"{impl:<14}{'yes' if ck else 'no':>10}{L:>10}{r['min_s']:>10.2f}{L / r['min_s']:>10.0f}"
                  f"{r['peak_gb']:>14.2f}  {r['src']}, {r['reps']} rep(s), loss {r['loss']:.3f}", flush=True)


if __name__ == "__main__":
    main()
