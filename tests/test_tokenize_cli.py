"""`mamba-dna tokenize`: a shard directory from FASTA files, and one clear line plus a
non-zero exit for each kind of bad input (nothing half-written left behind)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mamba_dna.cli import main
from mamba_dna.shards import ShardDataset

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_DNA_CACHE", str(tmp_path / "cache"))


def cli(*args) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


def test_tokenize_writes_shards(tmp_path, capsys):
    fa = shutil.copy(FIXTURES / "tiny.fa", tmp_path / "tiny.fa")
    bgz = shutil.copy(FIXTURES / "tiny.bgzf.fa.gz", tmp_path / "tiny.bgzf.fa.gz")
    out = tmp_path / "shards"
    rc = cli("tokenize", fa, bgz, "--out", out, "--window", 300,
             "--split-by", "block", "--block-size", 600, "--val-fraction", 0.25,
             "--test-fraction", 0.25, "--both-strands")
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.strip() == str(out)  # stdout: the result path only
    assert "wrote" in cap.err
    m = json.loads((out / "manifest.json").read_text())
    assert m["window"]["length"] == 300 and m["window"]["strands"] == "both"
    assert len(m["sources"]) == 2
    n = sum(len(ShardDataset(out, s)) for s in ("train", "val", "test"))
    assert n == sum(m["counts"].values()) and n % 2 == 0  # + and - of every window
    assert (tmp_path / "tiny.bgzf.fa.gz.gzi").exists()  # BGZF indexed in place


def test_tokenize_regions_bed(tmp_path, capsys):
    out = tmp_path / "s"
    rc = cli("tokenize", FIXTURES / "tiny.fa.gz", "-o", out, "-w", 500, "--regions",
             FIXTURES / "tiny.bed", "--pad", "drop", "--val-fraction", 0, "--test-fraction", 0)
    assert rc == 0, capsys.readouterr().err
    idx = ShardDataset(out, "train").index
    assert [(r, s, e) for r, s, e in zip(idx["record"], idx["start"], idx["end"], strict=True)] == [
        ("chr1", 100, 600), ("chr1", 600, 1100), ("chr1", 2000, 2500)]


BAD = {
    "empty": (b"", "the file is empty"),
    "not_fasta": (b"hello world\n", "is not a FASTA: line 1"),
    "no_sequence": (b">a\nACGT\n>b\n", "record 'b' (line 3) has no sequence"),
    "duplicate": (b">a\nACGT\n>a\nACGT\n", "duplicate record name 'a'"),
    "invalid_char": (b">a\nACGTXACGT\n", "record 'a': invalid character b'X' at offset 4"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_fasta_exits_2_with_one_line(tmp_path, capsys, case):
    data, msg = BAD[case]
    fa = tmp_path / f"{case}.fa"
    fa.write_bytes(data)
    out = tmp_path / "shards"
    assert cli("tokenize", fa, "-o", out, "-w", 4) == 2
    err = capsys.readouterr().err
    assert err.startswith("mamba-dna: error: ") and msg in err and str(fa) in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".shards*"))


def test_truncated_gzip_exits_2(tmp_path, capsys):
    raw = gzip.compress(b">a\n" + b"ACGT" * 5000 + b"\n")
    fa = tmp_path / "t.fa.gz"
    fa.write_bytes(raw[: len(raw) - 30])
    assert cli("tokenize", fa, "-o", tmp_path / "s") == 2
    assert "corrupt or truncated gzip" in capsys.readouterr().err


def test_region_outside_contig_exits_2(tmp_path, capsys):
    bed = tmp_path / "r.bed"
    bed.write_text("chrM\t0\t600\n")
    assert cli("tokenize", FIXTURES / "tiny.fa.gz", "-o", tmp_path / "s", "--regions", bed) == 2
    assert "r.bed: line 1: region chrM:0-600 is outside the contig (length 517" in capsys.readouterr().err


def test_windows_line_endings_and_mixed_widths_are_accepted(tmp_path, capsys):
    crlf = tmp_path / "crlf.fa"
    crlf.write_bytes(b">a\r\nACGTACGT\r\nACGTACGT\r\nAC\r\n")
    mixed = tmp_path / "mixed.fa"
    mixed.write_bytes(b">b\nACGTACGT\nACG\nACGTACGT\n")
    out = tmp_path / "s"
    assert cli("tokenize", crlf, mixed, "-o", out, "-w", 8, "--val-fraction", 0,
               "--test-fraction", 0) == 0
    err = capsys.readouterr().err
    assert "normalised copy" in err  # the mixed-width file is explained, then read
    idx = ShardDataset(out, "train").index
    assert list(idx["end"] - idx["start"]) == [8, 8, 2, 8, 8, 3]


def test_bad_options_and_existing_output(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli("tokenize", FIXTURES / "tiny.fa.gz", "-o", out, "--pad", "zero") == 2
    assert "pad='zero'" in capsys.readouterr().err
    assert cli("tokenize", FIXTURES / "tiny.fa.gz", "-o", out, "--invalid", "skip") == 2
    assert cli("tokenize", FIXTURES / "tiny.fa.gz", "-o", out, "-w", 100) == 0
    capsys.readouterr()
    assert cli("tokenize", FIXTURES / "tiny.fa.gz", "-o", out, "-w", 100) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli("tokenize", tmp_path / "missing.fa", "-o", tmp_path / "s2") == 2
    assert "no such file" in capsys.readouterr().err


def test_console_script_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mamba_dna", "tokenize", str(tmp_path / "x.fa"),
                        "-o", str(tmp_path / "s")], capture_output=True, text=True,
                       env={"MAMBA_DNA_CACHE": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert r.stderr.strip() == f"mamba-dna: error: {tmp_path / 'x.fa'}: no such file; expected a FASTA"
