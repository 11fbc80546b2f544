"""Benchmark: FASTA -> token ids on real genomes, our path vs Biopython vs the machine's limit.

    .venv/bin/python bench/tokenize.py [--repeats 3] [--data ../shared/data]

For each genome (plain-gzip FASTA from ../shared/data), every path produces the uint8 token
ids of every record, and is timed `repeats` times, the paths interleaved round-robin; the table shows the minimum
(the machine is shared, so the minimum is the least disturbed run). MB/s = megabases of sequence per
second (1 base = 1 byte of sequence).

Paths, side by side in the same run:
  limit: read+gunzip   read the .gz bytes and gunzip them in memory (zlib): the floor for
                       any path that starts from this file
  ours, cold           Genome(path) with an empty cache (gunzip to the cache, scan and write
                       the .fai, memory-map) + Genome.tokens for every record
  ours, warm           the same with the cache and index in place (a second epoch / worker)
  ours, tokenize->shards  `mamba-dna tokenize` end to end (16 kb windows, 2 kb for the
                       2 kb Drosophila records; block split, .npy
                       + soft-mask bits + index + manifest with the source's sha256), warm cache
  limit: read plain    reading the decompressed bytes from the page cache (memory copy)
  Biopython            SeqIO.parse(gzip text) + a Python dict lookup per base (the common
                       hand-written path)
  Biopython + LUT      SeqIO.parse + our numpy lookup table (isolates the parser's cost)

Targets (issue 5): ours, cold >= 20x Biopython; ours, cold within 2x of read+gunzip.
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from _common import cpu_model  # noqa: E402 (bench/_common.py)

ROOT = Path(__file__).resolve().parents[1]
GENOMES = [  # label, path under the data folder, window length for the tokenize row
    ("E. coli DH1", "species/bacteria/Escherichia_coli__DH1.fna.gz", 16384),
    ("human chr20 window", "pretrain/human_chr20_GRCh37_31000000-33000000.fa.gz", 16384),
    ("Drosophila upstream x7000", "pretrain/dm3_upstream2000_first7000.fa.gz", 2000),
]


def best_of(fn, repeats: int, setup=None) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def ours(path: Path) -> int:
    from mamba_dna.genome import Genome

    g = Genome(path)
    n = 0
    for name in g.names:
        ids, _soft = g.tokens(name)  # (L,) uint8, (L,) bool
        n += len(ids)
    g.close()
    return n


def ours_shards(path: Path, out: Path, window: int) -> int:
    from mamba_dna.genome import WindowSpec
    from mamba_dna.shards import write_shards

    m = write_shards([path], out, WindowSpec(length=window, split_by="block"), overwrite=True)
    return m["sources"][0]["bases"]


def biopython_dict(path: Path) -> int:
    from Bio import SeqIO

    table = {c: i for i, c in enumerate("ACGT", start=4)}
    table.update({c.lower(): i for c, i in table.items()})
    n = 0
    with gzip.open(path, "rt") as fh:
        for rec in SeqIO.parse(fh, "fasta"):
            ids = np.array([table.get(c, 8) for c in str(rec.seq)], dtype=np.uint8)
            n += len(ids)
    return n


def biopython_lut(path: Path) -> int:
    from Bio import SeqIO

    from mamba_dna.tokenizer import encode_bytes

    n = 0
    with gzip.open(path, "rt") as fh:
        for rec in SeqIO.parse(fh, "fasta"):
            n += len(encode_bytes(bytes(rec.seq), invalid="N"))
    return n


def read_gunzip(path: Path) -> int:
    with open(path, "rb") as fh:
        return len(zlib.decompress(fh.read(), 47))  # 47: gzip header, max window


def read_plain(path: Path) -> int:
    with open(path, "rb") as fh:
        return len(fh.read())


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy {np.__version__}, zlib {zlib.ZLIB_RUNTIME_VERSION}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--data", default=os.environ.get("MAMBA_DNA_DATA", ROOT.parent / "shared" / "data"))
    ap.add_argument("--skip-biopython-dict", action="store_true", help="the slowest peer")
    args = ap.parse_args()
    data = Path(args.data)
    if not data.exists():
        sys.exit(f"real data not found at {data}: pass --data or set MAMBA_DNA_DATA")
    from mamba_dna import log

    log.info = lambda msg: None  # keep the table clean (the cache log line is expected)

    print(f"# machine: {machine()}")
    print(f"# each time is the minimum of {args.repeats} runs on a shared machine\n")
    hdr = f"| {'genome':<26} | {'Mb':>5} | {'path':<22} | {'time s':>7} | {'MB/s':>7} | {'x Biopython':>11} | {'x limit':>7} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for label, rel, window in GENOMES:
        path = data / rel
        if not path.exists():
            print(f"| {label:<26} | missing: {rel}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            counter = iter(range(10**6))
            os.environ["MAMBA_DNA_CACHE"] = tmp

            def fresh_cache(tmp=tmp, counter=counter):
                os.environ["MAMBA_DNA_CACHE"] = os.path.join(tmp, str(next(counter)))

            from mamba_dna.genome import Genome

            plain = Genome(path).data_path  # warms the cache for the warm rows
            paths = [  # (row name, function, setup before each timed run)
                ("limit: read+gunzip", lambda p=path: read_gunzip(p), None),
                ("ours, cold", lambda p=path: ours(p), fresh_cache),
                ("ours, warm", lambda p=path: ours(p), lambda t=tmp: os.environ.update(MAMBA_DNA_CACHE=t)),
                ("ours, tokenize->shards",
                 lambda p=path, o=Path(tmp) / "shards", w=window: ours_shards(p, o, w),
                 lambda t=tmp: os.environ.update(MAMBA_DNA_CACHE=t)),
                ("limit: read plain", lambda p=plain: read_plain(p), None),
                ("Biopython", lambda p=path: biopython_dict(p), None),
                ("Biopython + LUT", lambda p=path: biopython_lut(p), None),
            ]
            if args.skip_biopython_dict:
                paths = [x for x in paths if x[0] != "Biopython"]
            times: dict[str, list[float]] = {name: [] for name, _, _ in paths}
            bases = None
            for _ in range(args.repeats):  # interleaved, so load from others hits every path alike
                for name, fn, setup in paths:
                    t, n = best_of(fn, 1, setup=setup)
                    times[name].append(t)
                    if name.startswith(("ours, cold", "Biopython")):
                        assert bases is None or n == bases, (name, n, bases)
                        bases = n
            rows = [(name, min(ts), None) for name, ts in times.items()]
            t_lim = min(times["limit: read+gunzip"])
            t_bio = min(times["Biopython"]) if "Biopython" in times else None
            for name, t, _ in rows:
                xb = f"{t_bio / t:.1f}" if t_bio else "-"
                xl = f"{t / t_lim:.2f}"
                print(f"| {label:<26} | {bases / 1e6:>5.1f} | {name:<22} | {t:>7.3f} | "
                      f"{bases / 1e6 / t:>7.1f} | {xb:>11} | {xl:>7} |")
    print("\nx Biopython = Biopython time / this time (higher is faster); "
          "x limit = this time / read+gunzip time (1.00 = at the limit)")


if __name__ == "__main__":
    main()
