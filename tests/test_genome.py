"""Genome (indexed FASTA: plain, CRLF, mixed widths, gzip cache, BGZF, read-only dirs),
aliases, bad inputs, GenomeWindows and the train/val/test split.

Everything is compared against a plain per-line Python parse of the same bytes."""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.genome import Genome, GenomeWindows, read_bed, split_of
from mamba_dna.tokenizer import N, encode_bytes, reverse_complement

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBA_DNA_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def fx(tmp_path) -> Path:
    """A writable copy of the fixture folder."""
    d = tmp_path / "fx"
    shutil.copytree(FIXTURES, d, ignore=shutil.ignore_patterns("*.py", "*.fai", "*.gzi"))
    return d


def ref_parse(raw: bytes) -> dict[str, bytes]:
    """The slow, obvious FASTA parse: the reference every fast path is compared with."""
    out: dict[str, bytes] = {}
    name = None
    for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
        if line.startswith(b">"):
            name = line[1:].split()[0].decode()
            out[name] = b""
        elif name is not None:
            out[name] += line.strip()
    return out


def check_against_reference(g: Genome, ref: dict[str, bytes], rng) -> None:
    assert g.names == list(ref)
    assert g.lengths == {k: len(v) for k, v in ref.items()}
    for name, seq in ref.items():
        assert g.fetch(name) == seq
        ids, soft = g.tokens(name)
        want_ids, want_soft, _ = encode_bytes(seq, with_softmask=True)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(soft, want_soft)
        for _ in range(25):  # random ranges, crossing line ends
            a, b = sorted(rng.integers(0, len(seq) + 1, 2))
            assert g.fetch(name, a, b) == seq[a:b], (name, a, b)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------- formats


def test_plain_fasta_matches_reference_and_pyfaidx(fx):
    import pyfaidx

    path = fx / "tiny.fa"
    ref = ref_parse(path.read_bytes())
    g = Genome(path)
    assert g.kind == "plain"
    check_against_reference(g, ref, np.random.default_rng(1))
    # our .fai is samtools-compatible: pyfaidx reads it and agrees
    assert (fx / "tiny.fa.fai").exists()
    fa = pyfaidx.Fasta(str(path), sequence_always_upper=False, build_index=False)
    for name, seq in ref.items():
        assert str(fa[name][:]).encode() == seq
    fa.close()
    # soft-mask and N run as written in the fixture
    ids, soft = g.tokens("chr1", 490, 1410)
    assert soft[10:310].all() and not soft[:10].any() and not soft[310:].any()
    assert (ids[1200 - 490 : 1400 - 490] == N).all()


def test_windows_line_endings_are_read_in_place(fx):
    raw = (fx / "tiny.fa").read_bytes()
    path = write(fx / "crlf.fa", raw.replace(b"\n", b"\r\n"))
    g = Genome(path)
    assert g.data_path == path  # no copy needed: the .fai line width counts the CR
    check_against_reference(g, ref_parse(raw), np.random.default_rng(2))


@pytest.mark.parametrize("kind", ["mixed_width", "mixed_endings", "blank_line"])
def test_irregular_files_are_normalised_once(fx, kind, capsys):
    raw = (fx / "tiny.fa").read_bytes()
    lines = raw.split(b"\n")
    if kind == "mixed_width":  # join two sequence lines of chr1: a 120-base line
        lines[3] = lines[3] + lines.pop(4)
    elif kind == "mixed_endings":
        lines[5] = lines[5] + b"\r"
    else:
        lines.insert(6, b"")
    bad = write(fx / f"{kind}.fa", b"\n".join(lines))
    g = Genome(bad)
    assert g.data_path != bad and "norm" in g.data_path.name
    assert "normalised copy" in capsys.readouterr().err
    check_against_reference(g, ref_parse(raw), np.random.default_rng(3))
    assert Genome(bad).data_path == g.data_path  # second open reuses the copy


def test_plain_gzip_is_decompressed_to_cache_once(fx, tmp_path, capsys):
    g = Genome(fx / "tiny.fa.gz")
    assert g.kind == "gzip"
    assert Path(os.environ["MAMBA_DNA_CACHE"]) in g.data_path.parents
    err = capsys.readouterr().err
    assert err.count("decompressing once") == 1
    check_against_reference(g, ref_parse((fx / "tiny.fa").read_bytes()), np.random.default_rng(4))
    g2 = Genome(fx / "tiny.fa.gz")
    assert g2.data_path == g.data_path
    assert "decompressing" not in capsys.readouterr().err


def test_bgzf_is_read_in_place(fx):
    g = Genome(fx / "tiny.bgzf.fa.gz")
    assert g.kind == "bgzf" and g.data_path == fx / "tiny.bgzf.fa.gz"
    check_against_reference(g, ref_parse((fx / "tiny.fa").read_bytes()), np.random.default_rng(5))


def test_read_only_directory_puts_index_in_cache(fx):
    ro = fx / "ro"
    ro.mkdir()
    shutil.copy(fx / "tiny.fa", ro / "tiny.fa")
    ro.chmod(0o555)
    try:
        g = Genome(ro / "tiny.fa")
        assert g.fetch("chr2", 0, 5) == ref_parse((fx / "tiny.fa").read_bytes())["chr2"][:5]
        assert not (ro / "tiny.fa.fai").exists()
        assert list((Path(os.environ["MAMBA_DNA_CACHE"]) / "index").glob("*tiny.fa.fai"))
    finally:
        ro.chmod(0o755)


def _open_and_fetch(path: str) -> bytes:
    return Genome(path).fetch("chrM")


def test_concurrent_workers_build_one_consistent_index(fx):
    ctx = mp.get_context("fork")
    with ctx.Pool(4) as pool:
        out = pool.map(_open_and_fetch, [str(fx / "tiny.fa.gz")] * 8)
    assert len(set(out)) == 1 and len(out[0]) == 517
    cache = Path(os.environ["MAMBA_DNA_CACHE"]) / "fasta"
    assert len(list(cache.glob("*.tiny.fa"))) == 1
    assert not list(cache.glob(".*tmp"))  # no temporary files left behind


def test_pickled_genome_reopens(fx):
    import pickle

    g = Genome(fx / "tiny.fa")
    g.fetch("chr1", 0, 10)
    g2 = pickle.loads(pickle.dumps(g))
    assert g2.fetch("chr1", 100, 200) == g.fetch("chr1", 100, 200)


def test_aliases(fx):
    g = Genome(fx / "tiny.fa")
    assert g.resolve("1") == "chr1" and g.resolve("chr1") == "chr1"
    assert g.resolve("MT") == "chrM" and g.resolve("M") == "chrM"
    assert "2" in g and "chr9" not in g
    with pytest.raises(InputError, match=r"no record named 'chr9'.*chr1, chr2, chrM"):
        g.resolve("chr9")
    acc = write(fx / "acc.fa", b">gi|386593590|ref|NC_017625.1| E. coli\nACGT\n")
    ga = Genome(acc)
    assert ga.resolve("NC_017625.1") == ga.resolve("NC_017625") == "gi|386593590|ref|NC_017625.1|"


# ----------------------------------------------------------------------------- bad input


BAD_INPUTS = {
    "empty": (b"", "empty"),
    "blank": (b"\n\n  \n", "no sequence data"),
    "not_fasta": (b"chrom\tstart\tend\nchr1\t1\t2\n", "is not a FASTA: line 1"),
    "fastq": (b"@read1\nACGT\n+\nIIII\n", "looks like FASTQ"),
    "no_sequence": (b">a\nACGT\n>b\n>c\nAC\n", "record 'b' (line 3) has no sequence"),
    "no_sequence_last": (b">a\nACGT\n>b\n", "record 'b' (line 3) has no sequence"),
    "duplicate": (b">a\nACGT\n>b\nAC\n>a x\nGG\n", "duplicate record name 'a' at lines 1 and 5"),
    "no_name": (b">\nACGT\n", "without a record name"),
    "bzip2": (b"BZh91AY&SY", "bzip2-compressed"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_fasta_raises_clear_error(fx, case):
    data, msg = BAD_INPUTS[case]
    path = write(fx / f"{case}.fa", data)
    with pytest.raises(InputError) as e:
        Genome(path)
    assert msg in e.value.one_line()
    assert str(path) in e.value.one_line()
    assert not (fx / f"{case}.fa.fai").exists()  # nothing half-built left beside it


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        Genome(tmp_path / "nope.fa")


def test_truncated_gzip(fx):
    raw = (fx / "tiny.fa.gz").read_bytes()
    path = write(fx / "trunc.fa.gz", raw[: len(raw) // 2])
    with pytest.raises(InputError, match="corrupt or truncated gzip"):
        Genome(path)
    cache = Path(os.environ["MAMBA_DNA_CACHE"]) / "fasta"
    assert not list(cache.glob("*trunc*"))  # no partial decompressed copy


def test_region_outside_contig(fx):
    g = Genome(fx / "tiny.fa")
    with pytest.raises(InputError, match=r"chrM:500-600 is outside record 'chrM' \(length 517\)"):
        g.fetch("chrM", 500, 600)
    with pytest.raises(InputError, match="outside"):
        g.tokens("chr1", -1, 5)
    bed = write(fx / "bad.bed", b"chr1\t0\t100\nchrM\t10\t9999\n")
    with pytest.raises(InputError, match=r"bad.bed: line 2: region chrM:10-9999 is outside the contig"):
        read_bed(bed, g)


def test_invalid_character_names_file_record_offset(fx):
    path = write(fx / "gap.fa", b">a\nACGTACGTAC\nGT-ACG\n")
    g = Genome(path)
    with pytest.raises(InputError) as e:
        g.tokens("a", 4)
    msg = e.value.one_line()
    assert "gap.fa" in msg and "record 'a'" in msg and "offset 12" in msg
    g2 = Genome(path, invalid="N")
    ids, _ = g2.tokens("a")
    assert ids[12] == N and g2.n_invalid == 1


# ----------------------------------------------------------------------------- windows


def test_windows_coordinates_padding_and_stride(fx):
    g = Genome(fx / "tiny.fa")
    ws = list(GenomeWindows(g, length=1000, max_n_fraction=1.0))
    got = [(w.chrom, w.start, w.end) for w in ws]
    assert got == [("chr1", 0, 1000), ("chr1", 1000, 2000), ("chr1", 2000, 3000),
                   ("chr2", 0, 1000), ("chr2", 1000, 1500), ("chrM", 0, 517)]
    for w in ws:
        assert w.tokens.shape == w.softmask.shape == (1000,) and w.tokens.dtype == np.uint8
        ids, soft = g.tokens(w.chrom, w.start, w.end)
        n = w.end - w.start
        np.testing.assert_array_equal(w.tokens[:n], ids)
        np.testing.assert_array_equal(w.softmask[:n], soft)
        assert (w.tokens[n:] == N).all() and not w.softmask[n:].any()
    dropped = list(GenomeWindows(g, length=1000, pad="drop", max_n_fraction=1.0))
    assert [(w.chrom, w.start) for w in dropped] == [("chr1", 0), ("chr1", 1000), ("chr1", 2000), ("chr2", 0)]
    overl = [(w.chrom, w.start, w.end) for w in GenomeWindows(g, length=1000, stride=600, regions=["chr2"])]
    assert overl == [("chr2", 0, 1000), ("chr2", 600, 1500)]


def test_windows_n_filter_regions_and_strands(fx):
    g = Genome(fx / "tiny.fa")
    # the 200 bp N run (chr1:1200-1400) fills 2/3 of window [1100, 1400)
    kept = [w.start for w in GenomeWindows(g, length=300, regions=[("chr1", 800, 1700)], max_n_fraction=0.5)]
    assert kept == [800, 1400]
    ws = GenomeWindows(g, length=300, regions=[("chr1", 800, 1700)], max_n_fraction=0.5)
    list(ws)
    assert ws.n_dropped_n == 1
    bed = [(w.chrom, w.start, w.end) for w in GenomeWindows(g, length=500, regions=fx / "tiny.bed", pad="drop")]
    assert bed == [("chr1", 100, 600), ("chr1", 600, 1100), ("chr1", 2000, 2500)]
    both = list(GenomeWindows(g, length=250, regions=[("chrM", 0, 500)], strands="both"))
    assert [w.strand for w in both] == ["+", "-"] * 2
    np.testing.assert_array_equal(both[1].tokens, reverse_complement(both[0].tokens))
    np.testing.assert_array_equal(both[1].softmask, both[0].softmask[::-1])


def test_windows_bad_options(fx):
    g = Genome(fx / "tiny.fa")
    for kw in ({"length": 0}, {"pad": "zero"}, {"split": "dev"}, {"stride": -1},
               {"split_by": "block", "block_size": 10}, {"val_fraction": 0.6, "test_fraction": 0.5}):
        with pytest.raises(ConfigError):
            GenomeWindows(g, **{"length": 100, **kw})
    with pytest.raises(InputError, match="outside"):
        GenomeWindows(g, length=100, regions=[("chrM", 0, 10_000)])


def _intervals(ws):
    return [(w.chrom, w.start, w.start + len(w.tokens)) for w in ws]


@pytest.mark.parametrize("split_by", ["record", "block"])
def test_splits_are_deterministic_disjoint_and_complete(fx, split_by):
    recs = b"".join(b">r%d\n" % i + b"ACGT" * 500 + b"\n" for i in range(40))  # 40 x 2 kb
    g = Genome(write(fx / "many.fa", recs))
    kw = dict(length=128, stride=64, split_by=split_by, block_size=256, val_fraction=0.2,
              test_fraction=0.2, seed=7, max_n_fraction=1.0)
    parts = {s: _intervals(GenomeWindows(g, split=s, **kw)) for s in ("train", "val", "test")}
    assert all(parts.values()), {s: len(v) for s, v in parts.items()}
    # same split twice, and the union is exactly the unsplit plan
    assert parts["val"] == _intervals(GenomeWindows(g, split="val", **kw))
    assert sorted(sum(parts.values(), [])) == sorted(_intervals(GenomeWindows(g, **kw)))
    # no base is in two splits (windows extend up to start + length, padding included)
    owner: dict[tuple[str, int], str] = {}
    for s, ivs in parts.items():
        for chrom, a, b in ivs:
            for pos in range(a, b, 16):
                assert owner.setdefault((chrom, pos), s) == s, (chrom, pos)
    # a different seed changes the assignment
    other = _intervals(GenomeWindows(g, split="val", **{**kw, "seed": 8}))
    assert other != parts["val"]


def test_split_of_is_pure_and_uses_blocks():
    kw = dict(split_by="block", block_size=1000, seed=3)
    assert split_of("chr1", 0, **kw) == split_of("chr1", 999, **kw)
    got = {split_of("chr1", i * 1000, **kw) for i in range(200)}
    assert got == {"train", "val", "test"}
    frac = np.mean([split_of(f"c{i}", val_fraction=0.25, test_fraction=0.25) == "train" for i in range(2000)])
    assert 0.45 < frac < 0.55


# ----------------------------------------------------------------------------- real data


def test_real_ecoli_matches_biopython(shared_data):
    path = shared_data / "species" / "bacteria" / "Escherichia_coli__DH1.fna.gz"
    from Bio import SeqIO

    with gzip.open(path, "rt") as fh:
        rec = next(SeqIO.parse(fh, "fasta"))
    g = Genome(path)
    assert g.names == [rec.id] and g.lengths[rec.id] == len(rec.seq) == 4_630_707
    ids, _ = g.tokens(rec.id)
    np.testing.assert_array_equal(ids, encode_bytes(bytes(rec.seq).upper()))
    assert g.resolve("NC_017625.1") == rec.id


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_bulk_reads_of_long_records(tmp_path, eol):
    rng = np.random.default_rng(11)
    recs = {f"r{i}": rng.choice(list(b"ACGTNacgtn"), n).astype(np.uint8).tobytes()
            for i, n in enumerate((30_001, 12_345, 61))}
    body = b"".join(b">" + k.encode() + eol + eol.join(v[j : j + 61] for j in range(0, len(v), 61)) + eol
                    for k, v in recs.items())
    g = Genome(write(tmp_path / "long.fa", body))
    for name, seq in recs.items():
        assert g.fetch(name) == seq
        for _ in range(30):  # long ranges take the strided bulk path, short ones the other
            a = int(rng.integers(0, len(seq)))
            b = int(rng.integers(a, len(seq) + 1))
            assert g.fetch(name, a, b) == seq[a:b], (name, a, b)


# ----------------------------------------------------------------------------- data/fetch.py


def _fetch_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mamba_dna_data_fetch", FIXTURES.parent / "fetch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_shared_data_matches_manifest_checksums(shared_data):
    fetch = _fetch_module()
    assert set(fetch.read_manifest()) == set(fetch.SOURCES)  # every file has a source
    assert fetch.verify(shared_data, only="species/phage") == 0
    assert fetch.verify(shared_data, only="pretrain/human_chr20") == 0


def test_fetch_transforms_and_deb_extraction(tmp_path, monkeypatch):
    import io
    import lzma
    import tarfile

    fetch = _fetch_module()
    fa = b">20 chr20\nACGTACGTAC\nGGGTTT\n>21\nAAAA\n"
    assert fetch.derive(fa, "window:20:3-8") == b">20:3-8 (1-based inclusive)\nGTACGT\n"
    assert fetch.derive(gzip.compress(fa), "head:1") == b">20 chr20\nACGTACGTAC\nGGGTTT\n"
    assert fetch.derive(b"acgTTN\n", "revcomp").endswith(b"\nNAAcgt\n")
    gb = b"LOCUS X\nACCESSION   MN908947\nORIGIN\n        1 attaaaggtt tatac\n//\n"
    assert fetch.derive(gb, "genbank") == b">MN908947\nATTAAAGGTTTATAC\n"
    # a .deb is an ar archive holding data.tar.xz
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        info = tarfile.TarInfo("./usr/share/doc/x/ref.fa.gz")
        payload = gzip.compress(fa)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    data_xz = lzma.compress(tar_buf.getvalue())

    def ar_member(name: bytes, body: bytes) -> bytes:
        head = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        return head + str(len(body)).encode().ljust(10) + b"`\n" + body + b"\n" * (len(body) & 1)

    deb = b"!<arch>\n" + ar_member(b"debian-binary", b"2.0\n") + ar_member(b"data.tar.xz", data_xz)
    urls = []

    def fake_download(url):
        urls.append(url)
        if "/mr/binary/" in url:
            return json.dumps({"result": [{"hash": "abc", "architecture": "all"}]}).encode()
        return deb

    monkeypatch.setattr(fetch, "download", fake_download)
    got = fetch.deb_member("x-examples", "1.0-1", "usr/share/doc/x/ref.fa.gz", None, {})
    assert gzip.decompress(got) == fa
    assert urls == ["https://snapshot.debian.org/mr/binary/x-examples/1.0-1/binfiles",
                    "https://snapshot.debian.org/file/abc"]


def test_long_record_tokens_in_pieces_match_and_name_the_offset(tmp_path):
    rng = np.random.default_rng(12)
    seq = bytearray(rng.choice(list(b"ACGTacgtN"), 700_001).astype(np.uint8).tobytes())
    body = b">long\n" + b"\n".join(bytes(seq[i : i + 80]) for i in range(0, len(seq), 80)) + b"\n"
    g = Genome(write(tmp_path / "long.fa", body))
    ids, soft = g.tokens("long", 5, 700_000)  # spans several encoding pieces
    want_ids, want_soft, _ = encode_bytes(bytes(seq[5:700_000]), with_softmask=True)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(soft, want_soft)
    seq[456_789] = ord("X")
    body = b">long\n" + b"\n".join(bytes(seq[i : i + 80]) for i in range(0, len(seq), 80)) + b"\n"
    g = Genome(write(tmp_path / "bad.fa", body))
    with pytest.raises(InputError, match="record 'long': invalid character b'X' at offset 456789"):
        g.tokens("long")
    g = Genome(tmp_path / "bad.fa", invalid="N")
    assert g.tokens("long")[0][456_789] == N and g.n_invalid == 1
