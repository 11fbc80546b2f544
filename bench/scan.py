"""Selective scan on CPU: our fused path vs the reference and two public peers, one run.

    .venv/bin/python bench/scan.py            # dim 512 at L 4k/16k/64k, dim 128 at L 2^20
    .venv/bin/python bench/scan.py --quick    # small sizes, a minute
    .venv/bin/python bench/scan.py --sizes 512x16384,128x1048576 --repeats 5

batch 1, N 16, fp32, with D, z gate, delta_bias and softplus (mamba's training setting).
Implementations, each case in its own subprocess (so peak memory is its own):

  cpu     mamba_dna.kernels.cpu.selective_scan_cpu (this project's fast path)
  ref     mamba_dna.kernels.reference.selective_scan_ref (sequential PyTorch, autograd)
  mambapy mambapy's `pscan` (PyPI mambapy, Blelloch scan over materialised (B, L, D, N)),
          wrapped as mambapy.mamba.MambaBlock.selective_scan does
  hf      HuggingFace transformers' MambaMixer.slow_forward scan, replicated (it is a
          method of a module with its own projections, not callable on raw tensors):
          discrete_A and deltaB_u materialised as (B, D, L, N), then a Python loop over L

Columns: time (min of --repeats runs; the machine is shared, so minima, not means),
throughput in state updates/s (L*dim*N/time), peak RSS added by the call (VmHWM after
/proc/self/clear_refs, minus RSS before) and, for ours, that peak plus the inputs over
the bytes of the tensors the API takes, returns and differentiates ("api x").
A case whose estimated memory exceeds --max-gb is not run; the estimate is printed.
The "exp floor" row: torch.exp over L*dim*N float32 elements (preallocated buffer,
processed in (dim, 4096, N) blocks), the machine's own limit for any exp-based scan.
"vs exp" divides by it; "vs floor" divides by the exponentials the mode cannot avoid:
one set for the forward, two for forward+backward (an O(L*dim) backward cannot keep the
forward's L*dim*N values of exp(dt*A), so it recomputes them). For ours, the same floor is
also timed inside the case's own process, alternating with our runs, and the note gives
the ratio to it ("exp alongside"): on a shared machine whose speed drifts between
processes, that ratio is the steadier one.
forward+backward times the forward and `out.backward(gout)`; the incoming gradient `gout`
(ones, (1, dim, L)) is made before the clock starts, as the inputs are (until 0.2.1 its
allocation and fill were inside the timed region: ~12 ms at dim 512, L 16k, for every impl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

from _common import cpu_model

N_STATE = 16
IMPLS = ("cpu", "ref", "mambapy", "hf")

CHILD = textwrap.dedent(r"""
    import json, sys, time, torch
    impl, mode, dim, L, N, repeats = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
    import torch.nn.functional as F

    def inputs(L, grad):
        g = torch.Generator().manual_seed(0)
        t = dict(u=torch.randn(1, dim, L, generator=g),
                 delta=torch.randn(1, dim, L, generator=g) * 0.5 - 1.0,
                 A=-torch.rand(dim, N, generator=g) * 4 - 0.1,
                 B=torch.randn(1, N, L, generator=g), C=torch.randn(1, N, L, generator=g),
                 D=torch.randn(dim, generator=g), z=torch.randn(1, dim, L, generator=g),
                 bias=torch.randn(dim, generator=g) * 0.1)
        for v in t.values():
            v.requires_grad_(grad)
        return t

    def run_cpu(t):
        from mamba_dna.kernels.cpu import selective_scan_cpu
        return selective_scan_cpu(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                  t["bias"], True)

    def run_ref(t):
        from mamba_dna.kernels.reference import selective_scan_ref
        return selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                                  t["bias"], True)

    def run_mambapy(t):
        from mambapy.pscan import pscan
        x = t["u"].transpose(1, 2)  # (B, L, D)
        delta = F.softplus(t["delta"] + t["bias"][:, None]).transpose(1, 2)  # (B, L, D)
        Bm, Cm = t["B"].transpose(1, 2), t["C"].transpose(1, 2)  # (B, L, N)
        deltaA = torch.exp(delta.unsqueeze(-1) * t["A"])  # (B, L, D, N)
        BX = delta.unsqueeze(-1) * Bm.unsqueeze(2) * x.unsqueeze(-1)  # (B, L, D, N)
        hs = pscan(deltaA, BX)  # (B, L, D, N)
        y = (hs @ Cm.unsqueeze(-1)).squeeze(3) + t["D"] * x  # (B, L, D)
        return y.transpose(1, 2) * F.silu(t["z"])

    def run_hf(t):
        u = t["u"]
        dts = F.softplus(t["delta"] + t["bias"][:, None])  # (B, D, L)
        Bm, Cm = t["B"].transpose(1, 2), t["C"].transpose(1, 2)  # (B, L, N)
        dA = torch.exp(t["A"][None, :, None, :] * dts[:, :, :, None])  # (B, D, L, N)
        dBu = dts[:, :, :, None] * Bm[:, None, :, :] * u[:, :, :, None]  # (B, D, L, N)
        h = torch.zeros(u.shape[0], dim, N)
        ys = []
        for i in range(u.shape[2]):
            h = dA[:, :, i, :] * h + dBu[:, :, i, :]
            ys.append(torch.matmul(h, Cm[:, i, :].unsqueeze(-1))[:, :, 0])  # (B, D)
        y = torch.stack(ys, dim=-1) + u * t["D"][None, :, None]
        return y * F.silu(t["z"])

    fn = dict(cpu=run_cpu, ref=run_ref, mambapy=run_mambapy, hf=run_hf)[impl]
    grad = mode == "fwd+bwd"

    def once(t, gout):
        if grad:
            out = fn(t)
            out.backward(gout)  # the incoming gradient, made before the clock like the inputs
            for v in t.values():
                v.grad = None
        else:
            with torch.no_grad():
                fn(t)

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    t0 = time.perf_counter()
    once(inputs(256, grad), torch.ones(1, dim, 256))  # imports, numba compile or cache load
    first = time.perf_counter() - t0
    t = inputs(L, grad)
    gout = torch.ones(1, dim, L) if grad else None
    # The exp floor again, timed between our runs in this process (ours only): on a shared
    # machine the ratio of two minima taken side by side is steadier than one across processes.
    side = impl == "cpu"
    blk = min(L, 4096)
    ebuf = torch.randn(dim, blk, N) if side else None
    eout = torch.empty_like(ebuf) if side else None
    floors = []
    times, peak = [], 0
    for _ in range(repeats):
        if side:
            t0 = time.perf_counter()
            for _ in range((L + blk - 1) // blk):
                torch.exp(ebuf, out=eout)
            floors.append(time.perf_counter() - t0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS:")
        t0 = time.perf_counter()
        once(t, gout)
        times.append(time.perf_counter() - t0)
        peak = max(peak, status("VmHWM:") - before)
    in_bytes = sum(v.numel() * 4 for v in t.values())
    held = gout.numel() * 4 if grad else 0  # made before the clock: counted as held memory
    print(json.dumps(dict(time=min(times), peak=peak, in_bytes=in_bytes, held=held,
                          first=first, floor=min(floors) if floors else None)))
""")

EXP_CHILD = textwrap.dedent(r"""
    import json, sys, time, torch
    dim, L, N, repeats = map(int, sys.argv[1:5])
    blk = min(L, 4096)
    buf = torch.randn(dim, blk, N)
    out = torch.empty_like(buf)
    best = 1e9
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range((L + blk - 1) // blk):
            torch.exp(buf, out=out)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps(dict(time=best)))
""")


def est_bytes(impl: str, mode: str, dim: int, L: int, N: int) -> float:
    """Rough peak memory of a case, to skip the ones that cannot fit (bytes)."""
    DLN = dim * L * N * 4
    if impl == "cpu":
        return 16 * dim * L * 4
    if impl == "ref":
        return 2 * dim * L * 4 * 8 if mode == "fwd" else 10 * DLN
    if impl == "mambapy":  # ~32 bytes per (t, d, n) forward (FACTS.md), more for autograd
        return 8 * DLN if mode == "fwd" else 16 * DLN
    return 2.2 * DLN if mode == "fwd" else 6 * DLN  # hf: dA, dBu (+ saved, grads)


def est_seconds(impl: str, mode: str, L: int) -> float:
    """Python-loop peers run one step per position: ~60-200 us each here."""
    per = {"ref": 1e-4, "hf": 3e-5}.get(impl, 0.0)
    return L * per * (3 if mode != "fwd" else 1)


def run_child(code: str, args: list[str], timeout: float) -> dict:
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if r.returncode:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        return dict(error=f"failed: {tail[:80]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine() -> str:
    import numba
    import torch

    return (f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numba {numba.__version__} "
            f"({numba.get_num_threads()} threads)")


def fmt_bytes(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="dim 512 at L 4k, dim 128 at 16k")
    ap.add_argument("--sizes", default=None, help="comma list of DIMxL, e.g. 512x16384")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--modes", default="fwd,fwd+bwd")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-gb", type=float, default=12.0)
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="skip a Python-loop peer whose estimated time exceeds this")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    a = ap.parse_args(argv)
    if a.sizes:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in a.sizes.split(",")]
    elif a.quick:
        sizes = [(512, 4096), (128, 16384)]
    else:
        sizes = [(512, 4096), (512, 16384), (512, 65536), (128, 1 << 20)]
    impls = a.impls.split(",")
    modes = a.modes.split(",")
    N = N_STATE
    print(f"# machine: {machine()}")
    print(f"# batch 1, N {N}, fp32, D + z + delta_bias + softplus; min of {a.repeats} runs")
    hdr = (f"{'dim':>5} {'L':>8} {'mode':>8} {'impl':>8} {'time s':>9} {'G upd/s':>8} "
           f"{'vs exp':>7} {'vs floor':>8} {'peak RSS':>10} {'api x':>6}  note")
    print(hdr)
    print("-" * len(hdr))
    for dim, L in sizes:
        upd = dim * L * N
        ex = run_child(EXP_CHILD, [str(dim), str(L), str(N), str(a.repeats)], 3600)
        t_exp = ex.get("time", float("nan"))
        print(f"{dim:>5} {L:>8} {'-':>8} {'exp':>8} {t_exp:>9.4f} {upd / t_exp / 1e9:>8.3f} "
              f"{1.0:>7.2f} {1.0:>8.2f} {'':>10} {'':>6}  torch.exp of L*dim*N floats (the floor)")
        for mode in modes:
            for impl in impls:
                need = est_bytes(impl, mode, dim, L, N)
                secs = est_seconds(impl, mode, L)
                pre = f"{dim:>5} {L:>8} {mode:>8} {impl:>8}"
                if need > a.max_gb * 2**30:
                    print(f"{pre} {'-':>9} {'-':>8} {'-':>7} {'-':>8} {'-':>10} {'-':>6}  "
                          f"not run: needs ~{fmt_bytes(need)} (> {a.max_gb:g} GB)")
                    continue
                if secs > a.max_seconds:
                    print(f"{pre} {'-':>9} {'-':>8} {'-':>7} {'-':>8} {'-':>10} {'-':>6}  "
                          f"not run: ~{secs:.0f} s estimated (> --max-seconds)")
                    continue
                try:
                    r = run_child(CHILD, [impl, mode, str(dim), str(L), str(N),
                                          str(a.repeats)], timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    r = dict(error=f"timed out (> {a.timeout:g} s incl. start)")
                if "error" in r:
                    print(f"{pre} {'-':>9} {'-':>8} {'-':>7} {'-':>8} {'-':>10} {'-':>6}  {r['error']}")
                    continue
                t = r["time"]
                api = ""
                if impl == "cpu":
                    # takes u, delta, z, B, C, A, D, bias; returns out (dim*L); backward
                    # takes grad_out (dim*L) and returns a grad per input
                    api_bytes = r["in_bytes"] + dim * L * 4
                    api_bytes *= 2 if mode == "fwd+bwd" else 1
                    api = f"{(r['peak'] + r['in_bytes'] + r.get('held', 0)) / api_bytes:.2f}"
                note = f"first call {r['first']:.1f} s" if impl == "cpu" else ""
                sets = 2 if mode == "fwd+bwd" else 1
                floor = t_exp * sets
                if r.get("floor"):
                    note += (f"; exp alongside {r['floor']:.4f} s: "
                             f"{t / (sets * r['floor']):.2f}x floor")
                print(f"{pre} {t:>9.4f} {upd / t / 1e9:>8.3f} {t / t_exp:>7.2f} {t / floor:>8.2f} "
                      f"{fmt_bytes(r['peak']):>10} {api:>6}  {note}", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
