"""Caduceus-PS forward on CPU: ours against the plain PyTorch sequential scan, and per Mamba call
against the causal model of the same width.

    .venv/bin/python bench/caduceus.py                 # the full table (~40 min on 2 cores)
    .venv/bin/python bench/caduceus.py --lengths 1024 --peer-max 1024 --skip-big

Model: Caduceus-PS d_model 256 x 16 layers (the size of the 131k checkpoints), random weights,
batch 1. Rows:
* ours: CaduceusLM forward (no grad), PS halves stacked on the batch, both directions in one
  grouped scan, CPU tiles (mamba_dna/caduceus.py);
* peer: how the real Caduceus code runs without CUDA: every strand (RCPS wrapper) and every
  direction (BiMamba wrapper) is its own Mamba call on one batch row, through Mamba's slow
  path (in_proj, nn.Conv1d-style padded depthwise conv + SiLU, x_proj, dt_proj, out_proj as
  PyTorch ops) with a plain PyTorch sequential scan that materialises (batch, d_inner, L,
  d_state) for exp(dt A) and dt B u first (what mamba_ssm's selective_scan_ref and
  transformers' slow path do): 4 scans of d_inner channels per layer, no tiling;
* peer-stacked: a stronger peer, ours with only the scan swapped for that sequential scan
  (both strands on the batch and both directions on the channels of ONE scan, so a quarter
  of the Python steps);
  both peers' logits are checked against ours first; they run only up to --peer-max (they
  are ~2 orders of magnitude slower and O(L d N) in memory);
* causal: MambaLM of the same width (d_model 256, --causal-layers layers); "per call" divides a
  forward by the number of Mamba scans it runs (causal: 1 per layer; PS: 4 per layer = 2 strands
  x 2 directions).
* 2^20: one forward of a PS model of the same width with --big-layers layers (default 16,
  ~15 min on 2 cores), to show a megabase runs in O(L d) memory.

Each measurement runs in a fresh subprocess, so `peak_rss_GB` is that process's own peak
(ru_maxrss) and `over_base` the peak minus the RSS after building the model.
"one layer's activations" = the float32 tensors one PS layer creates at full length untiled
(per strand and direction: in_proj x and z, conv output, dt, y: 5 x d_inner; x_proj out
(dt_rank + 2 d_state); out_proj d_model), the figure the 131k target compares peak memory with.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

D_MODEL, N_LAYER = 256, 16
PEERS = ("peer", "peer-stacked")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def peer_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
              return_last_state=False, initial_state=None, seq_idx=None):
    """Plain PyTorch sequential selective scan, materialising (batch, dim, L, N) first."""
    import torch
    import torch.nn.functional as F

    b, dim, L = u.shape
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 4:  # (batch, groups, N, L) -> per channel
        B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (batch, dim, N, L)
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
        dBu = torch.einsum("bdl,bdnl,bdl->bdln", delta, B.float(), u)  # (batch, dim, L, N)
    else:
        dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B.float(), u)
        C = C[:, None]
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.float()))  # (batch, dim, L, N)
    h = u.new_zeros(b, dim, A.shape[1]) if initial_state is None else initial_state.float()
    ys = []
    for t in range(L):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append((h * C[..., t].float()).sum(-1))  # (batch, dim)
    y = torch.stack(ys, -1)  # (batch, dim, L)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return (y, h) if return_last_state else y


def slow_mamba(m, x):
    """One Mamba mixer over x (batch, L, d_model) as mamba_ssm's slow path runs it -> same shape."""
    import torch
    import torch.nn.functional as F

    L, di, R, N = x.shape[1], m.d_inner, m.dt_rank, m.d_state
    K = m.conv1d.weight.shape[-1]
    xz = m.in_proj(x).transpose(1, 2)  # (batch, 2 di, L)
    xi, z = xz[:, :di], xz[:, di:]
    xi = F.silu(F.conv1d(xi, m.conv1d.weight, m.conv1d.bias, padding=K - 1, groups=di)[..., :L])
    x_dbl = m.x_proj(xi.transpose(1, 2))  # (batch, L, R + 2N)
    dt = F.linear(x_dbl[..., :R], m.dt_proj.weight).transpose(1, 2)  # (batch, di, L)
    Bm = x_dbl[..., R:R + N].transpose(1, 2)  # (batch, N, L)
    Cm = x_dbl[..., R + N:].transpose(1, 2)
    A = -torch.exp(m.A_log.float())  # (di, N)
    y = peer_scan(xi, dt, A, Bm, Cm, m.D.float(), z=z, delta_bias=m.dt_proj.bias.float(),
                  delta_softplus=True)  # (batch, di, L)
    return m.out_proj(y.transpose(1, 2).to(x.dtype))  # (batch, L, d_model)


def split_bimamba_forward(self, u):
    """BiMamba as the real code runs it: u (rows, L, d) stacked [forward strand ; RC strand]
    for PS; each strand (the RCPS wrapper's two calls) and each direction (the BiMamba
    wrapper's two) is its own slow Mamba call over the batch."""
    import torch

    outs = []
    for x in (u.chunk(2) if self.cfg.rcps else (u,)):  # (batch, L, d) each
        f = slow_mamba(self.fwd, x)
        rv = slow_mamba(self.rev, x.flip(1)).flip(1)
        outs.append(f + rv if self.strategy == "add" else f * rv)
    return torch.cat(outs)


def use_peer(impl: str):
    """Switch this process to a peer: 'peer' (the real code's structure) or 'peer-stacked'."""
    import mamba_dna.caduceus as cad

    os.environ["MAMBA_DNA_BACKEND"] = "ref"
    os.environ["MAMBA_DNA_CPU_TILE"] = "0"
    cad.selective_scan_fn = peer_scan
    if impl == "peer":
        cad.BiMamba.forward = split_bimamba_forward


def build(kind: str, layers: int):
    import torch

    from mamba_dna.caduceus import CaduceusLM, ModelConfig
    from mamba_dna.model import MambaLM

    torch.manual_seed(0)
    if kind == "causal":
        return MambaLM(d_model=D_MODEL, n_layer=layers).eval()
    return CaduceusLM(ModelConfig(d_model=D_MODEL, n_layer=layers, bidirectional=True, rcps=True)).eval()


def child(args) -> None:
    import torch

    if args.impl.startswith("peer"):
        use_peer(args.impl)
    model = build("causal" if args.impl == "causal" else "ps", args.layers)
    ids = torch.randint(4, 8, (1, args.L), generator=torch.Generator().manual_seed(1))
    base = _rss_gb()
    times = []
    with torch.no_grad():
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = model(ids)
            times.append(time.perf_counter() - t)
    out = out[0] if isinstance(out, tuple) else out
    print(json.dumps({"times": times, "peak_gb": _rss_gb(), "base_gb": base,
                      "finite": bool(torch.isfinite(out[..., 4:8]).all())}))


def check(impl: str) -> None:
    """A peer and ours give the same logits (L 300, 2 layers of the bench width, tiles of
    1,024 tokens in ours at L 2,600 too)."""
    import torch

    model = build("ps", 2)
    inputs = [torch.randint(4, 8, (1, L), generator=torch.Generator().manual_seed(2)) for L in (300, 2600)]
    os.environ["MAMBA_DNA_CPU_TILE"] = "1"  # ours in the smallest tiles (1,024 tokens)
    with torch.no_grad():
        ours = [model(ids) for ids in inputs]
        use_peer(impl)  # from here on this process runs the peer
        peers = [model(ids) for ids in inputs]
    diffs = [(a[..., 4:8] - p[..., 4:8]).abs().max().item() for a, p in zip(ours, peers, strict=True)]
    print(json.dumps({"max_abs_diff": max(diffs)}))


def run_child(*extra: str, timeout: float = 3600) -> dict | None:
    cmd = [sys.executable, __file__, "--child", *extra]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if p.returncode != 0:
        print(p.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def layer_activation_gb(L: int) -> float:
    di, R, N = 2 * D_MODEL, -(-D_MODEL // 16), 16
    per = 5 * di + (R + 2 * N) + D_MODEL  # floats per position, per strand and direction
    return 4 * L * per * 4 / 2**30  # 2 strands x 2 directions, float32


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="1024,4096,16384,131072")
    ap.add_argument("--peer-max", type=int, default=16384, help="longest L the peer runs at")
    ap.add_argument("--stacked-max", type=int, default=4096, help="longest L peer-stacked runs at")
    ap.add_argument("--causal-layers", type=int, default=4)
    ap.add_argument("--big-layers", type=int, default=N_LAYER, help="layers of the 2^20 run (16: ~15 min)")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ours")
    ap.add_argument("--L", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=N_LAYER)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if args.check:
        check(args.impl)
        return 0
    sys.path.insert(0, os.path.dirname(__file__))
    from _common import cpu_model

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    log(f"machine: {cpu_model()}, {os.cpu_count()} CPUs (shared with other jobs)")
    for peer in PEERS:
        p = subprocess.run([sys.executable, __file__, "--check", "--impl", peer], capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr[-2000:], file=sys.stderr)
            return 1
        chk = json.loads(p.stdout.strip().splitlines()[-1])
        log(f"{peer} vs ours, logits of a 2-layer PS at L 300 and 2,600: max |diff| = {chk['max_abs_diff']:.2e}")
    rows = []
    lengths = [int(x) for x in args.lengths.split(",")]
    for L in lengths:
        for impl in ("ours", *PEERS, "causal"):
            if impl.startswith("peer") and L > (args.stacked_max if impl == "peer-stacked" else args.peer_max):
                continue
            layers = args.causal_layers if impl == "causal" else N_LAYER
            # ours/causal: the best of several forwards (the first ones grow the heap)
            reps = 1 if impl.startswith("peer") else 4 if L <= 4096 else 2 if L <= 16384 else 1
            log(f"{impl} L={L} layers={layers} ...")
            r = run_child("--impl", impl, "--L", str(L), "--layers", str(layers), "--repeats", str(reps))
            if r is None:
                log("  failed or timed out")
                continue
            t = min(r["times"])
            calls = layers * (1 if impl == "causal" else 4)
            rows.append((impl, L, layers, L / t, L * calls / t, r["peak_gb"], r["peak_gb"] - r["base_gb"]))
            log(f"  {L / t:,.0f} tokens/s, {t:.2f} s, peak {r['peak_gb']:.2f} GB (+{r['peak_gb'] - r['base_gb']:.2f})")
    if not args.skip_big:
        L = 1 << 20
        log(f"ours L={L} layers={args.big_layers} ...")
        r = run_child("--impl", "ours", "--L", str(L), "--layers", str(args.big_layers))
        if r is not None:
            t = min(r["times"])
            rows.append(("ours", L, args.big_layers, L / t, L * 4 * args.big_layers / t, r["peak_gb"],
                         r["peak_gb"] - r["base_gb"]))
    print("impl\tL\tlayers\ttokens_per_s\tmamba_call_tokens_per_s\tpeak_rss_GB\tover_base_GB\tone_layer_act_GB")
    for impl, L, layers, tps, cps, peak, over in rows:
        print(f"{impl}\t{L}\t{layers}\t{tps:,.0f}\t{cps:,.0f}\t{peak:.2f}\t{over:.2f}\t{layer_activation_gb(L):.2f}")
    by = {(impl, L): (tps, cps) for impl, L, _, tps, cps, _, _ in rows}
    for L in lengths:
        for peer in PEERS:
            if ("ours", L) in by and (peer, L) in by:
                print(f"L {L}: ours / {peer} tokens/s = {by[('ours', L)][0] / by[(peer, L)][0]:.1f}x")
        if ("ours", L) in by and ("causal", L) in by:
            print(f"L {L}: causal / ours per Mamba call = {by[('causal', L)][1] / by[('ours', L)][1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
