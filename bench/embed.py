"""Embedding export: bp/s and peak memory of `mamba-dna embed` against the model's bare forward.

    .venv/bin/python bench/embed.py              # H. pylori G27, first 256 kb, 16 kb windows
    .venv/bin/python bench/embed.py --quick      # 64 kb, 1 repeat (smoke run)
    .venv/bin/python bench/embed.py --model DIR  # a trained model instead of random init
    .venv/bin/python bench/embed.py --model ../shared/data/models/caduceus_ps --memory-only
                                                 # a bidirectional model's peak memory

Same model (random-init MambaLM, 2 layers x d_model 128 unless --model), same machine, same
run. "bare forward" is `model.hidden` on the same windows in the same batches, streamed in
pieces of the same size with the state carried (`stream_hidden`, the loop `embed` runs),
tokens already in memory, no file: the limit for `embed` (target: embed within 1.3x of it).
"embed ..." rows are the whole `run_embed` job (FASTA read, streaming, HDF5 write through the
writer thread, sha256 of inputs), per-position rows with each --compression. Times are the
minimum of --repeats runs, taken round-robin over the rows so that a busy spell of the
(shared, noisy) machine does not fall on one row only.

The stage table times, on one thread of this process and one batch of windows, what the
per-position path adds to the forward pass: the cast to the stored dtype and the HDF5 write
with each filter (the writer thread runs these beside the next piece's forward).

Peak memory (peak RSS of a fresh process after imports and model load, /proc VmHWM reset
there; "after load" is the RSS at that point) for one
2^20 bp item (E. coli MG1655, first Mb) with per-position output, streamed in 2^15 pieces,
beside the bare one-pass forward on 2^18 bp (one pass holds O(L * d_inner) activations).
A bidirectional model (CaduceusLM) cannot stream: `embed` runs the item in one `hidden` call,
which the model tiles on a CPU, so its "bare" row is the same call at a quarter of the length.
"""

from __future__ import annotations

import argparse  # noqa: E402
import json  # noqa: E402
import os
import subprocess  # noqa: E402
import sys
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import best_of, cpu_model  # noqa: E402 (bench/_common.py)

DATA = Path(os.environ.get("MAMBA_DNA_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))
GENOME = DATA / "species/bacteria/Helicobacter_pylori__G27.fna.gz"
ECOLI = DATA / "species/bacteria/Escherichia_coli__MG1655-K12.fna.gz"


def make_model(model_dir: str | None, tmp: Path) -> Path:
    from mamba_dna.model import MambaConfig, MambaLM

    if model_dir:
        return Path(model_dir)
    torch.manual_seed(0)
    MambaLM(MambaConfig(d_model=128, n_layer=2)).save_pretrained(tmp / "model")
    return tmp / "model"


MEM_SNIPPET = r"""
import resource, sys, json, time, torch
from pathlib import Path
mode, model_dir, fasta, n, out = sys.argv[1:6]
n = int(n)
from mamba_dna.pipelines.embed import EmbedConfig, run_embed
from mamba_dna.genome import Genome
from mamba_dna.load import checkpoint_sha256, load_model
model, sha = load_model(model_dir), checkpoint_sha256(model_dir)
g = Genome(fasta)
name = g.names[0]
def hwm_mb():  # VmHWM: peak resident set size since the last reset
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:  # reset the high-water mark after imports and model load (Linux >= 4.0)
    open("/proc/self/clear_refs", "w").write("5")
except OSError:
    pass
base = hwm_mb()
t = time.perf_counter()
if mode == "stream":
    bed = Path(out).with_suffix(".bed")
    bed.write_text(f"{name}\t0\t{n}\n")
    run_embed(EmbedConfig(fasta=fasta, model=model_dir, out=out, bed=str(bed), per_position=True,
                          piece=1 << 15, device="cpu"), model=model, checkpoint_sha=sha)
else:
    ids = torch.from_numpy(g.tokens(name, 0, n)[0].astype("int64"))[None]
    with torch.no_grad():
        h = model.hidden(ids)  # MambaLM: (h, state); CaduceusLM: h
dt = time.perf_counter() - t
print(json.dumps({"peak_mb": hwm_mb(), "before_mb": base, "seconds": dt}))
"""


def peak_memory(mode, model_dir, fasta, n, out):
    r = subprocess.run([sys.executable, "-c", MEM_SNIPPET, mode, str(model_dir), str(fasta), str(n),
                        str(out)], capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "failed"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def stages(model, wins, batch, repeats, tmp):
    """Time what per-position output adds to one batch's forward, on this thread."""
    import h5py

    from mamba_dna.io import hdf5

    x = torch.from_numpy(np.stack([wins[i] for i in batch]).astype(np.int64))  # (B, L)
    with torch.no_grad():
        h = model.hidden(x)[0]  # (B, L, d) float32
    with torch.no_grad():
        t_fwd = best_of(lambda: model.hidden(x), repeats)
    a = h.numpy()
    mb = a.nbytes / 1e6
    print(f"\n# stages of one batch ({len(batch)} x {x.shape[1]:,} bp, {mb:.0f} MB float32), "
          f"one thread, min of {repeats}")
    print(f"| {'stage':<40} | {'seconds':>8} | {'x forward':>9} | {'file MB':>8} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 11}|{'-' * 10}|")
    print(f"| {'forward (model.hidden)':<40} | {t_fwd:8.3f} | {1:9.2f} | {'':>8} |")
    t = best_of(lambda: h.to(torch.float16).numpy(), repeats)
    print(f"| {'cast to float16 (torch)':<40} | {t:8.3f} | {t / t_fwd:9.2f} | {'':>8} |")
    for dtype in ("float32", "float16"):
        arr = a if dtype == "float32" else h.to(torch.float16).numpy()
        for comp in ("none", "lzf", "gzip"):
            path = tmp / "stage.h5"

            def write(arr=arr, dtype=dtype, comp=comp, path=path):
                with h5py.File(path, "w") as f:
                    f.create_group("per_position")
                    for b in range(arr.shape[0]):
                        ds = hdf5.per_position_dataset(f, b, arr.shape[1], arr.shape[2], dtype,
                                                       "x", compression=comp)
                        ds[:] = arr[b]
            t = best_of(write, repeats)
            what = f"HDF5 write {dtype}, {comp}"
            print(f"| {what:<40} | {t:8.3f} | {t / t_fwd:9.2f} | "
                  f"{path.stat().st_size / 1e6:8.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--bp", type=int, default=1 << 18)
    ap.add_argument("--window", type=int, default=1 << 14)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-bp", type=int, default=1 << 20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="only the peak memory table")
    a = ap.parse_args()
    if a.quick:
        a.bp, a.repeats, a.memory_bp = 1 << 16, 1, 1 << 18
    if not GENOME.exists():
        print(f"skip: {GENOME} not found (set MAMBA_DNA_DATA)")
        return

    from mamba_dna.genome import Genome
    from mamba_dna.load import checkpoint_sha256, load_model
    from mamba_dna.pipelines.embed import (
        EmbedConfig,
        make_batches,
        run_embed,
        stream_hidden,
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    model_dir = make_model(a.model, tmp)
    model, sha = load_model(model_dir), checkpoint_sha256(model_dir)
    g = Genome(GENOME)
    name = g.names[0]
    seq = g.fetch(name, 0, a.bp).decode()
    fa = tmp / "region.fa"  # a temp FASTA of the first --bp bases (outside the repo)
    fa.write_text(f">{name}\n" + "\n".join(seq[i : i + 80] for i in range(0, len(seq), 80)) + "\n")

    # bare forward: same windows, same batches, tokens in memory
    ids, _ = g.tokens(name, 0, a.bp)
    wins = [ids[s : s + a.window] for s in range(0, a.bp, a.window)]
    batches = make_batches([len(w) for w in wins], 1 << 16, 64)

    piece = EmbedConfig.piece  # the piece size run_embed streams with

    def bare():
        with torch.no_grad():
            for b in batches:
                x = torch.from_numpy(np.stack([wins[i] for i in b]).astype(np.int64))  # (B, L)
                stream_hidden(model, x, None, piece, lambda s, h: None)  # h (B, l, d)

    def job(per_position, rc=False, compression="none", dtype="float32"):
        def f():
            run_embed(EmbedConfig(fasta=str(fa), model=str(model_dir), out=str(tmp / "e.h5"),
                                  window=a.window, per_position=per_position, rc_average=rc,
                                  compression=compression, dtype=dtype, device="cpu"),
                      model=model, checkpoint_sha=sha)
        return f

    if a.memory_only:
        return memory_table(a, model_dir)
    bare()  # warm-up (kernel compilation)
    cases = [("bare forward (stream_hidden, in memory)", bare, 1),
             ("embed pooled mean", job(False), 1),
             ("embed + per-position f32, none (default)", job(True), 1),
             ("embed + per-position f32, lzf", job(True, compression="lzf"), 1),
             ("embed + per-position f32, gzip", job(True, compression="gzip"), 1),
             ("embed + per-position f16, none", job(True, dtype="float16"), 1),
             ("embed pooled, --rc-average (2 passes)", job(False, True), 2)]
    times = [[] for _ in cases]
    for _ in range(a.repeats):  # round-robin: each row sees the machine's quiet and busy spells
        for k, (_, fn, _) in enumerate(cases):
            times[k].append(best_of(fn, 1))
    rows = [(what, min(ts), passes) for (what, _, passes), ts in zip(cases, times, strict=True)]

    print(f"# embed throughput: {cpu_model()}, "
          f"{os.cpu_count()} cpus, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"# model {model_dir.name}: {model.config.n_layer} layers x d_model {model.config.d_model}; "
          f"{a.bp:,} bp of {GENOME.name}, {a.window:,} bp windows; min of {a.repeats} runs")
    print(f"| {'what':<40} | {'seconds':>8} | {'bp/s':>10} | {'x bare':>7} |")
    print(f"|{'-' * 42}|{'-' * 10}|{'-' * 12}|{'-' * 9}|")
    t0 = rows[0][1]
    for what, t, passes in rows:
        print(f"| {what:<40} | {t:8.2f} | {a.bp / t:10,.0f} | {t / (t0 * passes):7.2f} |")
    print("(x bare: time / (bare time x passes); --rc-average runs the model twice)")
    stages(model, wins, batches[0], a.repeats, tmp)
    memory_table(a, model_dir)


def memory_table(a, model_dir: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-mem-"))
    mem_fa = ECOLI if ECOLI.exists() else GENOME
    print(f"\n# peak memory (max RSS of a fresh process), {mem_fa.name}")
    print(f"| {'what':<52} | {'peak MB':>8} | {'after load MB':>13} | {'seconds':>8} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 15}|{'-' * 10}|")
    for mode, n, what in (("stream", a.memory_bp, f"embed --per-position, one {a.memory_bp:,} bp item"),
                          ("bare", a.memory_bp // 4, f"bare one-pass model.hidden, {a.memory_bp // 4:,} bp")):
        r = peak_memory(mode, model_dir, mem_fa, n, tmp / f"mem_{mode}.h5")
        if "error" in r:
            print(f"| {what:<52} | failed: {r['error']}")
            continue
        print(f"| {what:<52} | {r['peak_mb']:8.0f} | {r['before_mb']:13.0f} | {r['seconds']:8.1f} |")


if __name__ == "__main__":
    main()
