"""Whole-model throughput and memory on CPU: ours vs transformers' slow path vs mambapy.

    python bench/model.py [--quick] [--lengths 4096,16384,65536] [--stream 1048576]
                          [--piece 65536] [--reps 3] [--mem-limit-gb 12]

One set of weights for everyone: a randomly initialised transformers `MambaForCausalLM`
(4 layers x d_model 256, d_state 16, expand 2, vocab 16) is saved, converted with
`mamba_dna.convert` and loaded into mambapy's `Mamba` (its layers; the embedding, final
norm and LM head around them use the same tensors). A first step checks that the three
give the same logits. Then, batch 1, for each L: forward tokens/s (inference, no grad),
forward+backward tokens/s (mean of the log-partition of the logits as loss) and the peak
resident memory of the process. Each measurement runs in a fresh subprocess so its peak is
its own; the table gives the minimum over `--reps` runs (fewer when one run exceeds 60 s;
the count is printed). Finally our streamed forward over `--stream` tokens in pieces of
`--piece` with the state carried, which is how `score` and `embed` run a megabase.

A peer whose memory, extrapolated linearly from its measurement at the previous L, would
exceed `--mem-limit-gb` is not run at that L and is reported as such (the machine is
shared). Timings are noisy on a shared machine: compare only rows of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

# torch and numba each run an OpenMP pool; idle threads spinning in one starve the other on
# a loaded machine. Sleep when idle (applies to every implementation measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

D_MODEL, N_LAYER, D_STATE, VOCAB = 256, 4, 16, 16
IMPLS = ("ours", "transformers", "mambapy")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


# ----------------------------------------------------------------------------- models


def build_checkpoint(root: str, seed: int = 0) -> tuple[str, str]:
    """-> (transformers dir, our converted dir)."""
    import torch
    from transformers import MambaConfig, MambaForCausalLM

    from mamba_dna.convert import convert

    torch.manual_seed(seed)
    cfg = MambaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, state_size=D_STATE,
                      num_hidden_layers=N_LAYER, expand=2, conv_kernel=4)
    hf_dir, ours_dir = os.path.join(root, "hf"), os.path.join(root, "ours")
    MambaForCausalLM(cfg).save_pretrained(hf_dir)
    convert(hf_dir, ours_dir, fmt="transformers")
    return hf_dir, ours_dir


class MambapyLM:
    """mambapy's `Mamba` layers between our embedding / final norm / LM head tensors."""

    def __init__(self, ours_dir: str):
        import torch
        from mambapy.mamba import Mamba, MambaConfig

        from mamba_dna.model import MambaLM

        ours = MambaLM.from_pretrained(ours_dir)
        c = ours.config
        self.layers = Mamba(MambaConfig(d_model=c.d_model, n_layers=c.n_layer, d_state=c.d_state,
                                        expand_factor=c.expand, d_conv=c.d_conv, dt_rank=c.dt_rank_value,
                                        rms_norm_eps=c.norm_eps, pscan=True))
        sd = {k[len("backbone."):]: v for k, v in ours.state_dict().items()
              if k.startswith("backbone.layers.")}
        self.layers.load_state_dict(sd, strict=True)  # raises on any missing / unexpected name
        self.embedding, self.norm_f, self.lm_head = ours.backbone.embedding, ours.backbone.norm_f, ours.lm_head
        self.modules = torch.nn.ModuleList([self.layers, self.embedding, self.norm_f])

    def __call__(self, ids):
        h = self.embedding(ids)  # (1, L, d_model)
        h = self.layers(h)
        return self.lm_head(self.norm_f(h))  # (1, L, vocab)

    def train(self, mode=True):
        self.modules.train(mode)
        return self


def load(impl: str, hf_dir: str, ours_dir: str):
    """-> callable ids (1, L) -> logits (1, L, vocab), and a train(mode) switch."""
    if impl == "ours":
        from mamba_dna.model import MambaLM

        m = MambaLM.from_pretrained(ours_dir)
        return (lambda ids: m(ids)[0]), m
    if impl == "transformers":
        from transformers import MambaForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        m = MambaForCausalLM.from_pretrained(hf_dir)
        return (lambda ids: m(input_ids=ids, use_cache=False).logits), m
    m = MambapyLM(ours_dir)
    return m, m


# ----------------------------------------------------------------------------- child


def child(args) -> None:
    """One measurement in this process; prints one JSON line."""
    import torch

    torch.manual_seed(1)
    fn, mod = load(args.impl, args.hf_dir, args.ours_dir)
    warm = torch.randint(4, 8, (1, 256))
    with torch.no_grad():
        mod.train(False)
        fn(warm)  # numba caches, allocator warm-up
    base = _rss_gb()
    ids = torch.randint(4, 8, (1, args.L))  # (1, L) A/C/G/T
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        if args.mode == "fwd":
            mod.train(False)
            with torch.no_grad():
                out = fn(ids)  # (1, L, vocab)
            del out
        elif args.mode == "fwdbwd":
            mod.train(True)
            out = fn(ids)
            loss = torch.logsumexp(out.float(), dim=-1).mean()
            loss.backward()
            del out, loss
        else:  # stream: our model only, pieces with the carried state
            mod.train(False)
            st, acc = None, 0.0
            with torch.no_grad():
                for a in range(0, args.L, args.piece):
                    logits, st = mod(ids[:, a : a + args.piece], st)  # (1, piece, vocab)
                    acc += float(logits[..., 4:8].log_softmax(-1).max(-1).values.sum())
        times.append(time.perf_counter() - t0)
        if times[-1] > 60:
            break
    print(json.dumps({"times": times, "peak_gb": _rss_gb(), "base_gb": base}))


def check(args) -> None:
    """Same logits from all three at a short length; prints one JSON line."""
    import torch

    ids = torch.randint(4, 8, (1, 1024), generator=torch.Generator().manual_seed(0))
    out = {}
    with torch.no_grad():
        for impl in IMPLS:
            fn, mod = load(impl, args.hf_dir, args.ours_dir)
            mod.train(False)
            out[impl] = fn(ids).float()
    print(json.dumps({impl: float((out[impl] - out["ours"]).abs().max()) for impl in IMPLS}))


# ----------------------------------------------------------------------------- parent


def run_child(*extra: str, timeout: float = 3600) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), *extra]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {r.returncode}: {tail[:120]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 4096 only, stream 2^18, 1 rep")
    ap.add_argument("--lengths", default="4096,16384,65536")
    ap.add_argument("--stream", type=int, default=2**20, help="streamed forward length")
    ap.add_argument("--piece", type=int, default=65536, help="streamed piece length")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mem-limit-gb", type=float, default=12.0)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--timeout", type=float, default=1800,
                    help="seconds per measurement subprocess; a peer over it is reported as such")
    ap.add_argument("--modes", default="fwd,fwdbwd", help="fwd, fwdbwd or both (stream: --stream 0 skips it)")
    ap.add_argument("--child", nargs=5, metavar=("IMPL", "MODE", "L", "HF_DIR", "OURS_DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--check", nargs=2, metavar=("HF_DIR", "OURS_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        args.impl, args.mode, L, args.hf_dir, args.ours_dir = args.child
        args.L = int(L)
        child(args)
        return 0
    if args.check:
        args.hf_dir, args.ours_dir = args.check
        check(args)
        return 0

    lengths = [4096] if args.quick else [int(x) for x in args.lengths.split(",")]
    reps = 1 if args.quick else args.reps
    stream = 2**18 if args.quick else args.stream
    impls = [i for i in args.impls.split(",") if i]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import torch

    from mamba_dna import __version__
    from mamba_dna.kernels import choose_backend

    versions = {"torch": torch.__version__}
    for mod in ("transformers", "mambapy"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:
            versions[mod] = "not installed"

    rows = []
    with tempfile.TemporaryDirectory(prefix="mamba-dna-bench-") as root:
        log("building the shared checkpoint (transformers -> mamba_dna.convert -> mambapy)")
        hf_dir, ours_dir = build_checkpoint(root)
        chk = run_child("--check", hf_dir, ours_dir)
        log(f"same-weights check, max |logits - ours| at L=1024: {chk}")
        for mode in [m for m in ("fwd", "fwdbwd") if m in args.modes.split(",")]:
            for impl in impls:
                prev = None  # (L, peak over base) of the previous length
                slow_at = None  # a shorter L that already ran past --timeout
                for L in lengths:
                    if slow_at is not None:
                        rows.append((impl, mode, L, None, None,
                                     f"not run: L={slow_at} already took > {args.timeout:.0f} s"))
                        continue
                    if prev is not None and impl != "ours":
                        est = prev[1] * L / prev[0]
                        if est > args.mem_limit_gb:
                            rows.append((impl, mode, L, None, None, f"not run: needs ~{est:.0f} GB "
                                         f"(> --mem-limit-gb {args.mem_limit_gb:g})"))
                            log(f"{impl} {mode} L={L}: skipped, estimated {est:.1f} GB")
                            continue
                    log(f"{impl} {mode} L={L} ...")
                    r = run_child("--child", impl, mode, str(L), hf_dir, ours_dir, "--reps", str(reps),
                                  timeout=args.timeout)
                    if "error" in r:
                        rows.append((impl, mode, L, None, None, r["error"]))
                        log(f"  {r['error']}")
                        if r["error"].startswith("timed out"):
                            slow_at = L
                        continue
                    t = min(r["times"])
                    rows.append((impl, mode, L, L / t, r["peak_gb"], f"min of {len(r['times'])}, {t:.2f} s"))
                    log(f"  {L / t:,.0f} tokens/s, peak {r['peak_gb']:.2f} GB ({r['times']})")
                    prev = (L, max(r["peak_gb"] - r["base_gb"], 0.05))
        if "ours" in impls and stream > 0:
            log(f"ours streamed forward L={stream} in pieces of {args.piece} ...")
            r = run_child("--child", "ours", "stream", str(stream), hf_dir, ours_dir, "--reps", str(reps),
                          "--piece", str(args.piece))
            if "error" in r:
                rows.append(("ours (streamed)", "fwd", stream, None, None, r["error"]))
            else:
                t = min(r["times"])
                rows.append(("ours (streamed)", "fwd", stream, stream / t, r["peak_gb"],
                             f"pieces of {args.piece}, min of {len(r['times'])}, {t:.1f} s"))

    backend, _ = choose_backend("cpu")
    print(f"# bench/model.py  mamba-dna {__version__}  "
          + "  ".join(f"{k} {v}" for k, v in versions.items())
          + f"  {platform.machine()}  {os.cpu_count()} cores  torch threads {torch.get_num_threads()}"
          + f"  scan backend {backend}  OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"# model: {N_LAYER} layers x d_model {D_MODEL}, d_state {D_STATE}, expand 2, vocab {VOCAB}, "
          f"batch 1, fp32; same weights (max |logit diff| vs ours at L=1024: "
          + ", ".join(f"{k} {v:.1e}" for k, v in chk.items() if k != "ours") + ")"
          if chk and "error" not in chk else "# same-weights check failed: " + str(chk))
    print("impl\tmode\tL\ttokens_per_s\tpeak_rss_GB\tnote")
    for impl, mode, L, tps, peak, note in rows:
        print(f"{impl}\t{mode}\t{L}\t{'-' if tps is None else f'{tps:,.0f}'}\t"
              f"{'-' if peak is None else f'{peak:.2f}'}\t{note}")
    # speed-ups at each L where both ran
    by = {(i, m, L): tps for i, m, L, tps, _, _ in rows if tps}
    print()
    print("mode\tL\t" + "\t".join(f"ours/{p}" for p in impls if p != "ours"))
    for mode in ("fwd", "fwdbwd"):
        for L in lengths:
            ours = by.get(("ours", mode, L))
            cells = []
            for p in impls:
                if p == "ours":
                    continue
                peer = by.get((p, mode, L))
                cells.append(f"{ours / peer:.1f}x" if ours and peer else "-")
            print(f"{mode}\t{L}\t" + "\t".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
