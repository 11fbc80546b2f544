"""`mamba-dna demo --quick`: every stage runs and the report holds the figures it claims.

Runs on a data folder made here from the tiny fixtures (same layout as ../shared/data,
always), and on the real shared data when it is present (skipped with a reason otherwise).
"""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from mamba_dna.cli import main
from mamba_dna.errors import InputError
from mamba_dna.pipelines import demo as D

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "data" / "fixtures"
SECTIONS = ("## 1. Data and tokenization", "## 2. Pretraining", "## 3. Zero-shot variant effect scores",
            "## 4. Embeddings", "## 5. Species classification", "## 6. Timings")
COMP = {"A": "T", "C": "G", "G": "C", "T": "A"}


def read_fixture() -> dict[str, str]:
    recs: dict[str, list[str]] = {}
    name = None
    for line in (FIXTURES / "tiny.fa").read_text().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            recs[name] = []
        elif name:
            recs[name].append(line.strip())
    return {k: "".join(v) for k, v in recs.items()}


def write_fasta(path: Path, records: list[tuple[str, str]], gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f">{n}\n" + "\n".join(s[i : i + 60] for i in range(0, len(s), 60)) + "\n"
                   for n, s in records)
    path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())


def write_vcf(path: Path, chrom: str, rows: list[tuple[int, str, str, str]]) -> None:
    head = ["##fileformat=VCFv4.2", f"##contig=<ID={chrom}>",
            '##INFO=<ID=FITNESS,Number=1,Type=Float,Description="fixture label">',
            '##INFO=<ID=Y,Number=1,Type=Integer,Description="fixture label">',
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    body = [f"{chrom}\t{pos}\t.\t{ref}\t{alt}\t.\t.\t{info}" for pos, ref, alt, info in rows]
    path.write_bytes(gzip.compress(("\n".join(head + body) + "\n").encode()))


def make_data(root: Path) -> Path:
    """A data folder with the demo's layout, built from data/fixtures/tiny.fa.

    Four "serotypes" of chr1 differ at every 7th base (a class signal k-mers can see), with
    a few private mutations per genome; chr2 (IUPAC codes) is a "virus reference"; chrM the
    mitochondrion. The variant labels are pseudo-random: the test checks plumbing, not biology.
    """
    rng = np.random.default_rng(7)
    fx = read_fixture()
    chr1, chr2, chrm = fx["chr1"], fx["chr2"], fx["chrM"]
    genomes = []
    for c in range(1, 5):
        base = [COMP.get(b.upper(), b) if i % 7 == c else b for i, b in enumerate(chr1)]
        for j in range(3):
            s = list(base)
            for i in rng.choice(len(s), 20, replace=False):
                if s[i].upper() in COMP:
                    s[i] = "ACGT"[(("ACGT".index(s[i].upper())) + 1) % 4]
            genomes.append((f"FX{c}{j}_DENV{c}", "".join(s)))
    write_fasta(root / D.DENGUE, genomes, gz=True)
    write_fasta(root / "species/virus/fixture_chr2_reference.fna.gz", [("chr2", chr2)], gz=True)
    write_fasta(root / "species/mito/fixture_chrM.fna.gz", [("chrM", chrm)], gz=True)
    write_fasta(root / D.SARS2_REF, [("MN908947", chr1)], gz=False)
    write_fasta(root / D.MT_REF, [("MT", chrm)], gz=False)
    snv = []
    for pos in range(3, len(chr1), 5):
        ref = chr1[pos - 1].upper()
        if ref in COMP:
            for alt in "ACGT".replace(ref, ""):
                snv.append((pos, ref, alt, f"FITNESS={rng.normal() - 1:.3f}"))
    write_vcf(root / D.SARS2_VCF, "MN908947", snv)
    mt = [(pos, chrm[pos - 1].upper(), COMP[chrm[pos - 1].upper()], f"Y={k % 2}")
          for k, pos in enumerate(range(5, len(chrm), 11))]
    write_vcf(root / D.MT_VCF, "MT", mt)
    return root


def floats_in_row(text: str, first_cell: str, text_cells: int = 0) -> list[float]:
    """The numbers of the markdown table row whose first cell starts with `first_cell`: every
    cell after the first and after `text_cells` more text cells (e.g. a metric's name) must be
    a number (thousands commas allowed), else the test fails naming the cell."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith(first_cell):
            out = []
            for c in cells[1 + text_cells:]:
                try:
                    out.append(float(c.replace(",", "")))
                except ValueError:
                    raise AssertionError(f"row {line!r}: cell {c!r} is not a number") from None
            return out
    raise AssertionError(f"no table row starting with {first_cell!r}")


def section(text: str, heading: str) -> str:
    return text.split(heading, 1)[1].split("\n## ", 1)[0]


def check_output(out: Path, res: dict) -> None:
    text = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in text, s
    pre, emb, cls = (section(text, h) for h in (SECTIONS[1], SECTIONS[3], SECTIONS[4]))
    summ = json.loads((out / "summary.json").read_text())
    h = summ["headline"]
    # pretraining table == the run's figures; bits per base of a 4-letter alphabet
    final = floats_in_row(pre, "Mamba LM, final")[0]
    markov = floats_in_row(pre, "Markov, order")
    assert final == pytest.approx(h["pretrain_val_bits_per_base"], abs=1e-4)
    assert markov[-1] == pytest.approx(h["markov_val_bits_per_base"], abs=1e-4)
    assert 0.5 < final < 4 and 0.5 < markov[-1] <= 2.2
    # score table: one row per set (+ the fitness AUROC row), three scorers each
    for s in res["score"]["sets"]:
        label = "Spearman rho" if s["metric"] == "spearman" else "AUROC"
        row = [line for line in text.splitlines() if line.startswith(f"| {s['set']} | {label} |")]
        assert len(row) == 1, s["set"]
        nums = floats_in_row(row[0], s["set"], text_cells=1)  # after the metric name
        n, vals = nums[0], nums[1:]
        assert n == s["scorers"]["network"]["n"] > 0 and len(vals) == 4
        lo = -1 if s["metric"] == "spearman" else 0
        assert all(lo <= v <= 1 for v in vals)
        assert vals[0] == pytest.approx(h[f"{s['key']}_{s['metric']}_network"], abs=1e-3)
        for v in s["scorers"].values():
            assert Path(v["tsv"]).is_file()
    # embeddings and classification
    em = floats_in_row(emb, "Mamba embeddings")
    assert em[0] == pytest.approx(h["embed_loo_1nn_model"], abs=1e-3) and 0 <= em[0] <= 1
    assert 0 <= floats_in_row(emb, "4-mer profiles")[0] <= 1
    acc = floats_in_row(cls, "Mamba embeddings")
    assert acc[0] == pytest.approx(h["classify_accuracy_model"], abs=1e-3) and acc[2] > 0
    kmer = floats_in_row(cls, "k-mer profile")
    assert kmer[0] == pytest.approx(h["classify_accuracy_kmer"], abs=1e-3) and 0 <= kmer[1] <= 1
    length_rows = [line for line in cls.splitlines() if re.match(r"\| [0-9,]+ \|", line)]
    assert len(length_rows) == len(res["classify"]["length_table"]) >= 1
    assert re.search(r"\| total \| [0-9.]+ \|", text)
    # every linked plot exists and is a PNG; every written path is inside OUT
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(links) >= 6
    for rel in links:
        assert (out / rel).read_bytes()[:4] == b"\x89PNG", rel
    assert Path(res["embed"]["h5"]).is_file() and (Path(res["pretrain"]["model_dir"]) / "model.safetensors").is_file()
    assert all(math.isfinite(v) for v in h.values() if isinstance(v, float))
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.partial"))


def test_quick_on_fixtures_cli_and_rerun(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as e:
        main(["demo", "--quick", "--data", str(data), "--out", str(out), "--device", "cpu"])
    assert e.value.code == 0
    stdout = capsys.readouterr().out
    res = json.loads((out / "summary.json").read_text())
    check_output(out, res)
    assert str(out / "report.md") in stdout and "bits/base" in stdout and "AUROC" in stdout
    assert res["pretrain"]["steps"] == D.QUICK.steps
    # re-run into the same folder with a wall-clock budget: calibration path, clean overwrite
    res2 = D.run_demo(D.DemoConfig(out=str(out), data=str(data), quick=True, minutes=0.02))
    check_output(out, res2)
    cal = res2["pretrain"]["calibration"]
    assert cal and cal["step_s"] > 0 and res2["pretrain"]["steps"] >= D.QUICK.min_steps


def test_quick_on_real_data(tmp_path, shared_data):
    out = tmp_path / "demo"
    res = D.run_demo(D.DemoConfig(out=str(out), data=str(shared_data), quick=True, device="cpu"))
    check_output(out, res)
    tk = res["tokenize"]
    assert tk["bases"] > 300_000 and all(tk["windows"][s] > 0 for s in ("train", "val", "test"))
    assert set(res["embed"]["classes"]) == {"DENV1", "DENV2", "DENV3", "DENV4"}
    assert res["embed"]["n"] == 54
    sars = next(s for s in res["score"]["sets"] if s["key"] == "sarscov2")
    assert sars["scorers"]["network"]["n"] > 1000  # quick: the SNVs in the first 2 kb


def test_missing_data_is_one_line_with_the_download_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAMBA_DNA_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    partial = tmp_path / "partial"
    (partial / "species").mkdir(parents=True)
    with pytest.raises(InputError) as e:
        D.find_data(str(tmp_path / "nowhere"))
    assert "fetch.py fetch" in e.value.one_line() and "nowhere" in e.value.one_line()
    with pytest.raises(InputError, match=r"lacks .*ntmut_fitness"):
        D.find_data(str(partial))
    with pytest.raises(SystemExit) as e:
        main(["demo", "--quick", "--data", str(partial), "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mamba-dna: error: demo: no data folder")
    assert not (tmp_path / "o").exists()


def test_data_search_order(tmp_path, monkeypatch):
    data = tmp_path / "d"
    for rel in D.REQUIRED:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text("")
    monkeypatch.setenv("MAMBA_DNA_DATA", str(data))
    assert D.find_data(None) == data.resolve()  # the environment before ../shared/data
    assert D.find_data(str(data)) == data.resolve()
    with pytest.raises(InputError, match="--data: absent"):  # --data given: no fallback
        D.find_data(str(tmp_path / "elsewhere"))
    monkeypatch.delenv("MAMBA_DNA_DATA")
    cwd = tmp_path / "checkout"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert [p for p, _ in D.data_candidates(None)] == [REPO.parent / "shared" / "data",
                                                   tmp_path / "shared" / "data"]


def test_options_are_checked(tmp_path):
    with pytest.raises(Exception, match="not both"):
        D.DemoConfig(minutes=1, steps=5)
    with pytest.raises(Exception, match="positive"):
        D.DemoConfig(minutes=0)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("user file")
    data = make_data(tmp_path / "data")
    with pytest.raises(Exception, match="not a demo output"):
        D.run_demo(D.DemoConfig(out=str(tmp_path / "x"), data=str(data), quick=True))
    assert (tmp_path / "x" / "keep.txt").read_text() == "user file"


def test_quick_bidirectional_stage_beside_the_causal_one(tmp_path):
    data = make_data(tmp_path / "data")
    out = tmp_path / "demo"
    res = D.run_demo(D.DemoConfig(out=str(out), data=str(data), quick=True, device="cpu"))
    pm = res["pretrain_mlm"]
    assert pm["arch"] == "caduceus-ps" and pm["objective"] == "mlm" and pm["steps"] == D.QUICK.steps
    text = (out / "report.md").read_text()
    mlm = text.split("### Masked language model (bidirectional)", 1)[1].split("\n## ", 1)[0]
    final = floats_in_row(mlm, "Caduceus-PS, final")[0]
    kmer2 = floats_in_row(mlm, "two-sided k-mer")[-1]
    assert final == pytest.approx(res["headline"]["mlm_val_masked_bits_per_base"], abs=1e-4)
    assert kmer2 == pytest.approx(res["headline"]["kmer2_val_masked_bits_per_base"], abs=1e-4)
    assert 0.5 < final < 4 and 0.5 < kmer2 <= 2.2
    assert (out / "pretrain_mlm" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    from mamba_dna.caduceus import CaduceusLM
    from mamba_dna.load import load_model

    assert isinstance(load_model(pm["model_dir"]), CaduceusLM)
    # --no-mlm leaves it out
    res2 = D.run_demo(D.DemoConfig(out=str(out), data=str(data), quick=True, device="cpu", mlm=False))
    assert "pretrain_mlm" not in res2 and not (out / "pretrain_mlm").exists()
    assert "### Masked language model" not in (out / "report.md").read_text()


def test_quick_with_a_given_caduceus_model(tmp_path, capsys, shared_data):
    caduceus_ps = shared_data / "models" / "caduceus_ps"  # the real code's tiny Caduceus-PS
    data = make_data(tmp_path / "data")
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as e:
        main(["demo", "--quick", "--model", str(caduceus_ps), "--data", str(data), "--out", str(out),
              "--device", "cpu"])
    assert e.value.code == 0, capsys.readouterr().err
    res = json.loads((out / "summary.json").read_text())
    assert res["model"]["kind"] == "Caduceus-PS" and res["model"]["masked"] is True
    assert not (out / "pretrain").exists() and not (out / "shards").exists()
    text = (out / "report.md").read_text()
    assert "## 2. Model (given, no pretraining)" in text and "Mamba LM, final" not in text
    for s in res["score"]["sets"]:
        sc = s["scorers"]
        assert set(sc) == {"network", "kmer2_ref", "markov_ref", "composition"}
        assert sc["network"]["score"] == sc["kmer2_ref"]["score"] == "mlm_llr" and sc["network"]["n"] > 0
        label = "Spearman rho" if s["metric"] == "spearman" else "AUROC"
        row = [line for line in text.splitlines() if line.startswith(f"| {s['set']} | {label} |")]
        vals = floats_in_row(row[0], s["set"], text_cells=1)[1:]  # after the metric name and n
        assert len(vals) == 4 and vals[0] == pytest.approx(sc["network"]["value"], abs=1e-3)
    assert 0 <= res["embed"]["loo_1nn_model"] <= 1 and 0 <= res["classify"]["model"]["accuracy"] <= 1
    assert all((out / rel).read_bytes()[:4] == b"\x89PNG" for rel in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text))
    stdout = capsys.readouterr().out
    assert str(caduceus_ps) in stdout and "AUROC" in stdout
