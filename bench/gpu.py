"""GPU readiness check and benchmark: run it unattended the first time a CUDA GPU is at hand.

    python bench/gpu.py [--quick] [--dims 1536,2048] [--lengths 4096,65536,1048576]

1. Correctness at full size: the fused Triton scan (forward and backward, bf16 and fp32)
   against the fast CPU path (itself tested against the sequential reference), on a
   random subset of channels so the CPU side stays affordable at L = 2^20, and the Triton
   decode step against the reference step.
2. Timings: forward, forward+backward of the scan, and one AdamW training step (bf16
   autocast) of a MambaLM, ours vs mamba_ssm's CUDA kernel / MambaLMHeadModel when
   `mamba_ssm` is installed.
3. The bidirectional models (Caduceus-PS and -Ph, d_model 256 x 16 layers, random weights):
   both directions and both RC halves through the Triton scan, logits checked against the CPU
   path at full size (L 131,072; --quick 16,384), forward timed in fp32 and bf16.

Prints a table. On a machine without a CUDA GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import math
import sys
import time


def _timeit(fn, sync, reps=5):
    fn()
    sync()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _case(dim, L, N, dtype, dev, g, check_channels, sync, peer_scan, scan, scan_cpu):
    """One (dim, L, dtype) row: check against the CPU path on a channel subset, then time."""
    import torch

    def mk(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dev, dtype)

    u, z = mk(1, dim, L), mk(1, dim, L)  # (1, dim, L)
    delta = mk(1, dim, L, scale=0.5)  # (1, dim, L)
    B, C = mk(1, N, L), mk(1, N, L)  # (1, N, L)
    A = -torch.rand(dim, N, generator=g).to(dev).add_(0.5)  # (dim, N)
    D = torch.randn(dim, generator=g).to(dev)
    bias = torch.randn(dim, generator=g).to(dev) * 0.1
    leaves = [t.requires_grad_() for t in (u, delta, A, B, C, D, z)]

    out, last = scan(u, delta, A, B, C, D, z, bias, True, True)
    gout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, gout)
    # CPU check on a subset of channels (B, C grads need all channels: compare only the
    # per-channel outputs and gradients).
    idx = torch.randperm(dim, generator=g)[:check_channels].to(dev)
    sl = [t.detach()[:, idx].cpu().float().requires_grad_() for t in (u, delta, z)]
    o_ref, last_ref = scan_cpu(
        sl[0], sl[1], A.detach()[idx].cpu(), B.detach().cpu().float(), C.detach().cpu().float(),
        D.detach()[idx].cpu(), sl[2], bias[idx].cpu(), True, True,
    )
    g_ref = torch.autograd.grad(o_ref, sl, gout[:, idx].cpu().float())
    tol = dict(rtol=3e-2, atol=5e-2) if dtype == torch.bfloat16 else dict(rtol=6e-4, atol=2e-3)
    checks = {
        "out": (out[:, idx].float().cpu(), o_ref.float()),
        "last_state": (last[:, idx].float().cpu(), last_ref),
        "du": (grads[0][:, idx].float().cpu(), g_ref[0]),
        "ddelta": (grads[1][:, idx].float().cpu(), g_ref[1]),
        "dz": (grads[6][:, idx].float().cpu(), g_ref[2]),
    }
    bad = [k for k, (a, b) in checks.items() if not torch.allclose(a, b, **tol)]

    def fwd(fn):
        return lambda: fn(u, delta, A, B, C, D, z, bias, True)

    def fwd_bwd(fn):
        return lambda: torch.autograd.grad(fn(u, delta, A, B, C, D, z, bias, True), leaves, gout)

    t_f, t_fb = _timeit(fwd(scan), sync), _timeit(fwd_bwd(scan), sync)
    p_f = p_fb = float("nan")
    if peer_scan is not None:
        p_f, p_fb = _timeit(fwd(peer_scan), sync), _timeit(fwd_bwd(peer_scan), sync)
    return (dim, L, str(dtype).split(".")[-1], "ok" if not bad else "FAIL " + ",".join(bad),
            t_f * 1e3, t_fb * 1e3, p_f * 1e3, p_fb * 1e3)


def _train_step_table(dev, sync, quick: bool) -> str:
    """One AdamW training step (bf16 autocast) of a MambaLM, ours vs mamba_ssm's when installed."""
    import torch

    from mamba_dna.model import MambaConfig, MambaLM

    d_model, n_layer, L, batch = (512, 4, 8192, 2) if quick else (768, 12, 32768, 2)
    cfg = MambaConfig(d_model=d_model, n_layer=n_layer)
    ids = torch.randint(4, 8, (batch, L), device=dev)  # (batch, L) A/C/G/T tokens
    rows = [f"training step: {n_layer} layers x d_model {d_model}, batch {batch} x L {L}, bf16 autocast"]

    def step_time(model, logits_of):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = logits_of(model, ids)  # (batch, L, vocab)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        torch.cuda.reset_peak_memory_stats()
        t = _timeit(step, sync, reps=3)
        return t, torch.cuda.max_memory_allocated() / 2**30

    ours = MambaLM(cfg).to(dev)
    t, mem = step_time(ours, lambda m, x: m(x)[0])
    rows.append(f"  mamba-dna  {t * 1e3:9.1f} ms  {batch * L / t:12,.0f} tokens/s  peak {mem:.1f} GiB")
    del ours
    try:
        from mamba_ssm.models.config_mamba import MambaConfig as PeerConfig
        from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    except ImportError:
        rows.append("  mamba_ssm  not installed")
        return "\n".join(rows)
    peer = MambaLMHeadModel(PeerConfig(d_model=d_model, n_layer=n_layer, vocab_size=cfg.vocab_size,
                                       ssm_cfg={"layer": "Mamba1"})).to(dev)
    t, mem = step_time(peer, lambda m, x: m(x).logits)
    rows.append(f"  mamba_ssm  {t * 1e3:9.1f} ms  {batch * L / t:12,.0f} tokens/s  peak {mem:.1f} GiB")
    return "\n".join(rows)


def caduceus_rows(dev, sync, L: int, n_layer: int = 16, d_model: int = 256, reps: int = 3) -> tuple[list[str], int]:
    """Caduceus-PS / -Ph on `dev` against the CPU path (fp32 logits), and forward timings."""
    import torch

    from mamba_dna.caduceus import CaduceusLM, ModelConfig

    rows, failures = [f"bidirectional: d_model {d_model} x {n_layer} layers, batch 1, L {L}"], 0
    ids = torch.randint(4, 8, (1, L), generator=torch.Generator().manual_seed(0))  # (1, L)
    for rcps in (True, False):
        torch.manual_seed(0)
        cpu = CaduceusLM(ModelConfig(d_model=d_model, n_layer=n_layer, bidirectional=True, rcps=rcps)).eval()
        with torch.no_grad():
            want = cpu(ids)[..., 4:8]  # (1, L, 4) A C G T logits, the CPU path
            model = CaduceusLM(cpu.config).eval()
            model.load_state_dict(cpu.state_dict())
            model = model.to(dev)
            x = ids.to(dev)
            got = model(x)[..., 4:8].float().cpu()
            err = (got - want).abs().max().item()
            ok = err <= 2e-3 * max(1.0, want.abs().max().item())
            failures += not ok
            t32 = _timeit(lambda m=model, x=x: m(x), sync, reps=reps)
            mb = model.to(torch.bfloat16)
            t16 = _timeit(lambda m=mb, x=x: m(x), sync, reps=reps)
        kind = "PS" if rcps else "Ph"
        rows.append(f"  Caduceus-{kind}: vs CPU max|diff| {err:.2e} {'ok' if ok else 'FAIL'}; "
                    f"fwd fp32 {t32 * 1e3:.1f} ms ({L / t32:,.0f} tokens/s), bf16 {t16 * 1e3:.1f} ms "
                    f"({L / t16:,.0f} tokens/s)")
    return rows, failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small size only")
    ap.add_argument("--dims", default="1536,2048")
    ap.add_argument("--lengths", default="4096,65536,1048576")
    ap.add_argument("--n-state", type=int, default=16)
    ap.add_argument("--check-channels", type=int, default=64, help="channels compared on CPU")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU on this machine; nothing to check (exit 0).")
        return 0

    from mamba_dna.kernels.cpu import selective_scan_cpu
    from mamba_dna.kernels.reference import selective_state_update_ref
    from mamba_dna.kernels.triton_scan import selective_scan_triton
    from mamba_dna.kernels.triton_step import selective_state_update_triton

    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as peer_scan
    except ImportError:
        peer_scan = None

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(f"device: {props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB")
    print(f"mamba_ssm peer: {'installed' if peer_scan else 'not installed'}")
    sync = torch.cuda.synchronize
    dims = [int(x) for x in args.dims.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.quick:
        dims, lengths = dims[:1], lengths[:1]
    N = args.n_state
    g = torch.Generator(device="cpu").manual_seed(0)
    failures = 0
    rows = []
    for dim in dims:
        for L in lengths:
            for dtype in (torch.bfloat16, torch.float32):
                row = _case(dim, L, N, dtype, dev, g, args.check_channels, sync, peer_scan,
                            selective_scan_triton, selective_scan_cpu)
                failures += not row[3].startswith("ok")
                rows.append(row)
                torch.cuda.empty_cache()

    # decode step
    dim = dims[0]
    state = torch.randn(4, dim, N, device=dev)
    x, dt, zz = (torch.randn(4, dim, device=dev) for _ in range(3))
    Bs, Cs = torch.randn(4, N, device=dev), torch.randn(4, N, device=dev)
    A = -torch.rand(dim, N, device=dev)
    s_ref = state.clone()
    y = selective_state_update_triton(state, x, dt, A, Bs, Cs, None, zz, None, True)
    y_ref = selective_state_update_ref(s_ref, x, dt, A, Bs, Cs, None, zz, None, True)
    step_ok = torch.allclose(y, y_ref, rtol=1e-3, atol=1e-3) and torch.allclose(state, s_ref, rtol=1e-3, atol=1e-3)
    failures += not step_ok

    hdr = f"{'dim':>6} {'L':>9} {'dtype':>9} {'check':>14} {'fwd ms':>9} {'f+b ms':>9} {'peer fwd':>9} {'peer f+b':>9}"
    print(hdr)
    for r in rows:
        print(f"{r[0]:>6} {r[1]:>9} {r[2]:>9} {r[3]:>14} {r[4]:>9.2f} {r[5]:>9.2f} {r[6]:>9.2f} {r[7]:>9.2f}")
    print(f"decode step vs reference: {'ok' if step_ok else 'FAIL'}")
    print(_train_step_table(dev, sync, quick=args.quick))
    cad_rows, cad_fail = caduceus_rows(dev, sync, 16384 if args.quick else 131072)
    print("\n".join(cad_rows))
    failures += cad_fail
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
