"""score and embed under torchrun: each rank takes shard RANK/WORLD_SIZE, rank 0 merges, and
the result is identical to a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mamba_dna.genome import Genome
from mamba_dna.rankshard import part_path, with_token

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "data" / "fixtures" / "tiny.fa"


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cli(*args, torchrun=False):
    pre = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"] if torchrun else [sys.executable, "-m"]
    r = subprocess.run([*pre, "mamba_dna", *args], capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _vcf(path: Path) -> Path:
    g = Genome(str(FIXTURE))
    rng = np.random.default_rng(0)
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for chrom in ("chr1", "chrM"):
        seq = g.fetch(chrom, 0, g.lengths[chrom]).decode().upper()
        for pos in sorted(rng.choice(np.arange(5, len(seq) - 5), size=12, replace=False)):
            ref = seq[pos]
            alt = "ACGT"[("ACGT".index(ref) + 1) % 4] if ref in "ACGT" else "A"
            lines.append(f"{chrom}\t{pos + 1}\t.\t{ref}\t{alt}\t.\tPASS\t.")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_score_under_torchrun_equals_single_run(tmp_path):
    vcf = _vcf(tmp_path / "v.vcf")
    single, multi = tmp_path / "single.tsv", tmp_path / "multi.tsv"
    common = ["score", "--vcf", str(vcf), "--fasta", str(FIXTURE), "--model", "markov:3", "--scores", "llr,dll", "--window", "40"]
    _cli(*common, "--out", str(single))
    r = _cli(*common, "--out", str(multi), torchrun=True)
    assert "merged 2 rank parts" in r.stderr
    body = lambda p: [ln for ln in p.read_text().splitlines() if not ln.startswith("#")]  # noqa: E731
    assert body(multi) == body(single)
    assert len(body(single)) == 25  # header + 24 variants
    assert sorted(x.name for x in tmp_path.iterdir()) == ["multi.tsv", "single.tsv", "v.vcf"], "parts left behind"


@pytest.mark.slow
def test_embed_under_torchrun_equals_single_run(tmp_path, tiny_model_dir):
    single, multi = tmp_path / "single.h5", tmp_path / "multi.h5"
    common = ["embed", "--fasta", str(FIXTURE), "--model", str(tiny_model_dir), "--window", "128",
              "--pool", "mean"]
    _cli(*common, "--out", str(single))
    r = _cli(*common, "--out", str(multi), torchrun=True)
    assert "merged 2 rank parts" in r.stderr
    with h5py.File(single) as a, h5py.File(multi) as b:
        np.testing.assert_array_equal(a["pooled"][:], b["pooled"][:])
        assert a["pooled"].shape[0] > 4
    assert not list(tmp_path.glob("multi.*run*")), "parts left behind"


def test_with_token_keeps_double_suffix():
    p = with_token("out/scored.vcf.gz")
    assert p.name.startswith("scored.run") and p.name.endswith(".vcf.gz")


def test_one_part_name_rule_for_score_embed_and_the_sbatch_templates():
    assert part_path("out/scored.tsv", 3, 16) == Path("out/scored.shard3-of-16.tsv")
    assert part_path("s.vcf.gz", 0, 2) == Path("s.shard0-of-2.vcf.gz")  # .vcf.gz kept whole
    assert part_path("emb", 1, 3, default_suffix=".h5") == Path("emb.shard1-of-3.h5")
    assert part_path("emb.h5", 0, 1) == Path("emb.h5")  # one part: the output itself
    for tpl, line in (("score_array.sbatch", 'out="$PREFIX.shard$I-of-$N.tsv"'),
                      ("embed_array.sbatch", 'out="$PREFIX.shard$I-of-$N.h5"')):
        assert line in (ROOT / "scripts" / "slurm" / tpl).read_text(), tpl
