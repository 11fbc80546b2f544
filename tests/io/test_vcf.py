"""VCF reading/writing: formats, per-ALT reasons, malformed lines, aliases, pysam round trip."""

from __future__ import annotations

import gzip
from pathlib import Path

import pysam
import pytest

from mamba_dna.errors import ConfigError, InputError
from mamba_dna.io.vcf import (
    ContigResolver,
    InfoField,
    TsvWriter,
    VcfReader,
    VcfWriter,
    alt_skip_reason,
    count_records,
    parse_aliases,
    read_tsv,
)

HEADER = (
    "##fileformat=VCFv4.2\n"
    "##contig=<ID=c1,length=60>\n"
    '##INFO=<ID=Y,Number=1,Type=Integer,Description="label">\n'
    '##INFO=<ID=FLAG,Number=0,Type=Flag,Description="a flag">\n'
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
)
BODY = "c1\t5\trs1\tA\tC,G\t.\tPASS\tY=1\nc1\t9\t.\tac\t<DEL>,*,A\t.\t.\t.\nc1\t12\t.\tG\tT\t50\t.\tY=0;FLAG\n"


def _write(path: Path, text: str, how: str = "plain") -> Path:
    if how == "gzip":
        with gzip.open(path, "wt") as f:
            f.write(text)
    elif how == "bgzf":
        plain = path.with_suffix(".plain")
        plain.write_text(text)
        pysam.tabix_compress(str(plain), str(path), force=True)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("how", ["plain", "gzip", "bgzf"])
def test_reads_plain_gzip_bgzf_alike(tmp_path, how):
    p = _write(tmp_path / f"v.{how}.vcf", HEADER + BODY, how)
    r = VcfReader(p)
    recs = list(r)
    assert r.contigs == {"c1": 60}
    assert [(x.chrom, x.pos, x.start, x.ref, x.alts) for x in recs] == [
        ("c1", 5, 4, "A", ("C", "G")),
        ("c1", 9, 8, "AC", ("<DEL>", "*", "A")),
        ("c1", 12, 11, "G", ("T",)),
    ]
    assert [x.line for x in recs] == [6, 7, 8]
    assert recs[0].info == {"Y": "1"} and recs[2].info == {"Y": "0", "FLAG": True}
    assert count_records(p) == 3


def test_alt_skip_reasons():
    assert alt_skip_reason("ACGT") is None
    assert alt_skip_reason("<DEL>") == "symbolic_alt"
    assert alt_skip_reason("*") == "star_allele"
    assert alt_skip_reason(".") == "missing_alt"
    assert alt_skip_reason("G]17:198982]") == "breakend"
    assert alt_skip_reason(":") == "invalid_alt"


@pytest.mark.parametrize(
    "line, expect",
    [
        ("c1\tX7\t.\tA\tG\t.\t.\t.", "POS 'X7'"),
        ("c1\t7\t.\tA", "4 tab-separated columns"),
        ("c1\t7\t.\tAZ\tG\t.\t.\t.", "REF 'AZ'"),
        ("c1\t7\t.\tA\tG,,T\t.\t.\t.", "empty allele"),
    ],
)
def test_malformed_record_names_the_line(tmp_path, line, expect):
    p = _write(tmp_path / "bad.vcf.gz", HEADER + "c1\t5\t.\tA\tC\t.\t.\t.\n" + line + "\n", "gzip")
    with pytest.raises(InputError) as e:
        list(VcfReader(p))
    assert f"{p}:7:" in str(e.value) and expect in str(e.value)


def test_header_problems(tmp_path):
    with pytest.raises(InputError, match=":1: expected '##fileformat"):
        VcfReader(_write(tmp_path / "a.vcf", "chr1\t1\t.\tA\tC\t.\t.\t.\n"))
    with pytest.raises(InputError, match="no '#CHROM'"):
        VcfReader(_write(tmp_path / "b.vcf", "##fileformat=VCFv4.2\n"))
    with pytest.raises(InputError, match="no such VCF"):
        VcfReader(tmp_path / "missing.vcf")


class _FakeGenome:
    path = Path("ref.fa")
    names = ["1", "MT"]
    lengths = {"1": 10, "MT": 10}

    def resolve(self, name):
        table = {"1": "1", "chr1": "1", "MT": "MT", "chrM": "MT", "M": "MT"}
        if name not in table:
            raise InputError(f"no record {name}")
        return table[name]


def test_aliases_string_file_and_resolver(tmp_path):
    assert parse_aliases("chrX=1, weird=MT") == {"chrX": "1", "weird": "MT"}
    f = tmp_path / "alias.tsv"
    f.write_text("# vcf\tfasta\nNC_012920\tMT\nchr1 1\n")
    assert parse_aliases(str(f)) == {"NC_012920": "MT", "chr1": "1"}
    f.write_text("a b c\n")
    with pytest.raises(InputError, match=r"alias.tsv:1: expected two columns"):
        parse_aliases(str(f))
    with pytest.raises(ConfigError, match="not VCF_NAME=FASTA_NAME"):
        parse_aliases("chr1")
    res = ContigResolver(_FakeGenome(), {"NC_012920": "MT"})
    assert res("NC_012920") == "MT" and res("chrM") == "MT" and res("chr1") == "1"
    assert res("chr2") is None
    assert "--chrom-alias chr2=RECORD" in res.missing_message("chr2", "x.vcf:3")
    with pytest.raises(ConfigError, match="not a record"):
        ContigResolver(_FakeGenome(), {"chr1": "chr1"})


@pytest.mark.parametrize("suffix", [".vcf", ".vcf.gz"])
def test_writer_output_readable_by_pysam_with_info_headers(tmp_path, suffix):
    src = _write(tmp_path / "in.vcf", HEADER + BODY)
    rd = VcfReader(src)
    infos = [InfoField("MDNA_LLR", "A", "Float", 'log "ratio"'), InfoField("MDNA_STATUS", "A", "String", "why")]
    out = tmp_path / f"out{suffix}"
    with VcfWriter(out, rd.meta, rd.columns, infos, extra_meta=["##mamba-dna_score=model=x shard=0/1"]) as w:
        for rec in rd:
            n = len(rec.alts)
            w.write(rec, {"MDNA_LLR": [-1.5] + [None] * (n - 1), "MDNA_STATUS": ["ok"] * n})
    vf = pysam.VariantFile(str(out))
    assert vf.header.info["MDNA_LLR"].number == "A" and vf.header.info["MDNA_LLR"].type == "Float"
    assert vf.header.info["MDNA_STATUS"].type == "String"
    recs = list(vf)
    assert len(recs) == 3
    assert recs[0].info["MDNA_LLR"] == pytest.approx((-1.5, None)) or recs[0].info["MDNA_LLR"][0] == -1.5
    assert recs[1].info["MDNA_STATUS"] == ("ok", "ok", "ok")
    assert recs[2].info["Y"] == 0 and recs[2].info["FLAG"] is True  # input INFO kept
    if suffix == ".vcf.gz":
        assert Path(str(out) + ".tbi").is_file()
        assert len(list(pysam.VariantFile(str(out)).fetch("c1", 8, 12))) == 2
    # writing again replaces our fields instead of duplicating them
    out2 = tmp_path / "again.vcf"
    rd2 = VcfReader(out)
    with VcfWriter(out2, rd2.meta, rd2.columns, infos) as w:
        for rec in rd2:
            w.write(rec, {"MDNA_STATUS": ["x"] * len(rec.alts)})
    text = out2.read_text()
    assert text.count("##INFO=<ID=MDNA_STATUS") == 1 and "MDNA_LLR=" not in text.split("#CHROM")[1]


def test_writer_is_atomic_on_failure(tmp_path):
    out = tmp_path / "o.vcf.gz"
    rd = VcfReader(_write(tmp_path / "in.vcf", HEADER + BODY))
    with pytest.raises(RuntimeError):
        with VcfWriter(out, rd.meta, rd.columns, []) as w:
            w.write(next(iter(rd)), {})
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == [tmp_path / "in.vcf"]


def test_tsv_round_trip(tmp_path):
    rd = VcfReader(_write(tmp_path / "in.vcf", HEADER + BODY))
    out = tmp_path / "o.tsv"
    with TsvWriter(out, ["llr", "status"], comment="prov shard=0/1") as w:
        for rec in rd:
            for alt in rec.alts:
                w.write_row(rec, alt, [None, "ok"])
    comment, header, rows = read_tsv(out)
    assert comment == "prov shard=0/1"
    assert header == ["chrom", "pos", "id", "ref", "alt", "llr", "status"]
    assert [r[4] for r in rows] == ["C", "G", "<DEL>", "*", "A", "T"]
    assert rows[0][5] == "."


def test_real_plain_gzip_vcfs_parse(shared_data):
    p = shared_data / "variants/human_mt_mitomap/mitotip_scores.vcf.gz"
    recs = list(VcfReader(p))
    assert len(recs) == 6016
    assert any(alt_skip_reason(a) == "invalid_alt" for r in recs for a in r.alts)  # MitoTIP ':'
    multi = list(VcfReader(shared_data / "variants/human_mt_mitomap/mitomap_polymorphisms.vcf.gz"))
    assert any(len(r.alts) > 1 for r in multi)
