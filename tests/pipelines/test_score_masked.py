"""`score` with masked models (Caduceus, the two-sided k-mer): MLM_LLR through the whole path
equals a hand-built masked window; strands; indels, N, non-finite statuses; emb; errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mamba_dna.baselines import kmer2_from_spec
from mamba_dna.errors import ConfigError
from mamba_dna.genome import Genome
from mamba_dna.io.vcf import read_tsv
from mamba_dna.load import load_model
from mamba_dna.mlm import mlm_llr
from mamba_dna.pipelines.score import ScoreConfig, load_scorer, run_score
from mamba_dna.pipelines.score.masked import allele_windows
from mamba_dna.pipelines.score.scorers import masked_strands, trained_length
from mamba_dna.tokenizer import BASES, COMPLEMENT, MASK, N, decode, encode

DATA = Path(os.environ.get("MAMBA_DNA_DATA", Path(__file__).resolve().parents[2] / "../shared/data"))
MODELS = DATA / "models"
BRCA1 = DATA / "variants/brca1_sge_findlay2018/BRCA1_region_GRCh38.fasta.gz"
CONTIG = "chr17_42425000_43600000"
HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


def _other(b: str, k: int = 1) -> str:
    return "ACGT"[("ACGT".index(b) + k) % 4]


def _write_vcf(path: Path, chrom: str, rows) -> Path:
    path.write_text(HEADER + "".join(f"{chrom}\t{p}\tv{i}\t{r}\t{a}\t.\t.\t.\n" for i, (p, r, a) in enumerate(rows)))
    return path


def _rows(out: Path) -> list[dict]:
    _, header, rows = read_tsv(out)
    return [dict(zip(header, r, strict=True)) for r in rows]


def _cli(args, capsys) -> tuple[int, str]:
    from mamba_dna.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


def _hand_llr(model, x: np.ndarray, p: int, ref: str, alt: str, both: bool, context: int = 512) -> float:
    """log_softmax(masked logits over ACGT)[alt] - [ref] on a window built here by hand."""
    c = (context - 1) // 2
    win = np.full(context, N, np.uint8)
    lo, hi = max(0, p - c), min(x.size, p - c + context)
    win[lo - (p - c) : hi - (p - c)] = x[lo:hi]
    win[c] = MASK
    ids = torch.from_numpy(win.astype(np.int64))[None]  # (1, context)
    with torch.no_grad():
        lp = torch.log_softmax(model(ids)[0, c, list(BASES)].double(), -1)  # (4,)
        score = float(lp["ACGT".index(alt)] - lp["ACGT".index(ref)])
        if both:
            comp = torch.as_tensor(COMPLEMENT).long()
            rc = comp[ids.flip(1)]
            lr = torch.log_softmax(model(rc)[0, context - 1 - c, list(BASES)].double(), -1)
            cb = {"A": "T", "C": "G", "G": "C", "T": "A"}
            score = 0.5 * (score + float(lr["ACGT".index(cb[alt])] - lr["ACGT".index(cb[ref])]))
    return score


# ------------------------------------------------------------------ two-sided k-mer (kmer2:auto)


@pytest.fixture()
def small_ref(tmp_path):
    """A 3 kb random contig with a run of N, an SNV set, an indel, an MNV, SNVs in the N run."""
    rng = np.random.default_rng(3)
    seq = list(decode(rng.integers(4, 8, 3000)))
    seq[2000:2100] = "N" * 100
    seq = "".join(seq)
    fa = tmp_path / "ref.fa"
    fa.write_text(">c1\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    rows = [(p, seq[p - 1], _other(seq[p - 1], k)) for p, k in ((5, 1), (700, 2), (700, 3), (1500, 1))]
    rows += [(900, seq[899], seq[899] + "AC"), (1200, seq[1199:1201], _other(seq[1199]) + _other(seq[1200])),
             (2050, "A", "C")]  # insertion, MNV, an SNV on N (REF disagrees with the N)
    return fa, _write_vcf(tmp_path / "in.vcf", "c1", rows), seq


def test_kmer2_auto_through_cli_equals_direct(small_ref, tmp_path, capsys):
    fa, vcf, seq = small_ref
    out = tmp_path / "s.tsv"
    code, err = _cli(["score", "-i", str(vcf), "-f", str(fa), "--model", "kmer2:auto", "-o", str(out)], capsys)
    assert code == 0, err
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["edge", "ok", "ok", "ok", "not_snv_masked_model",
                                           "not_snv_masked_model", "ref_mismatch"]
    assert "mlm_llr" in rows[0] and "llr" not in rows[0] and "dll" not in rows[0]
    assert "kmer2:auto validation bits/base" in err and "1 of 7 ALT alleles sit on N" in err
    # the same fit, scored by hand on the masked window
    x = encode(seq)
    m, _ = kmer2_from_spec("kmer2:auto", [x])
    for r in rows[:4]:
        p = int(r["pos"]) - 1
        win = np.full(512, N, np.uint8)
        lo = p - 255
        seg = x[max(0, lo) : lo + 512]
        win[max(0, -lo) : max(0, -lo) + seg.size] = seg
        win[255] = MASK
        lp = m.masked_log_probs(win[None])[0, 255].astype(np.float64)  # (4,)
        want = lp["ACGT".index(r["alt"])] - lp["ACGT".index(r["ref"])]
        assert float(r["mlm_llr"]) == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_kmer2_unmasked_llr_and_refusals(small_ref, tmp_path, capsys):
    fa, vcf, _ = small_ref
    out = tmp_path / "u.tsv"
    s = run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model="kmer2:2", out=str(out), scores=("mlm", "llr")),
            progress=False)
    rows = _rows(out)
    assert s.scored == 4 and s.skipped["not_snv_masked_model"] == 2 and s.skipped["ref_mismatch"] == 1
    # the two-sided k-mer ignores the token it predicts, so masking changes nothing for it
    for r in rows[:4]:
        assert float(r["llr"]) == pytest.approx(float(r["mlm_llr"]), rel=1e-4, abs=1e-5)
    for scores, what in ((("dll",), "needs a causal model"), (("emb",), "no embeddings")):
        code, err = _cli(["score", "-i", str(vcf), "-f", str(fa), "--model", "kmer2:2", "-o",
                          str(tmp_path / "e.tsv"), "--scores", ",".join(scores)], capsys)
        assert code == 2 and what in err and "Traceback" not in err
    code, err = _cli(["score", "-i", str(vcf), "-f", str(fa), "--model", "markov:2", "-o",
                      str(tmp_path / "e.tsv"), "--scores", "mlm"], capsys)
    assert code == 2 and "needs a masked model" in err
    with pytest.raises(ConfigError, match="kmer2:K"):
        load_scorer("kmer2:x", Genome(fa))


def test_kmer2_npz_loads_as_scorer(small_ref, tmp_path):
    fa, vcf, seq = small_ref
    m, _ = kmer2_from_spec("kmer2:3", [encode(seq)])
    m.save(tmp_path / "k.npz")
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model=str(tmp_path / "k.npz"), out=str(a)), progress=False)
    run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model="kmer2:3", out=str(b)), progress=False)
    assert [r["mlm_llr"] for r in _rows(a)] == [r["mlm_llr"] for r in _rows(b)]


def test_all_snvs_on_n_is_a_clear_summary(tmp_path, capsys):
    rng = np.random.default_rng(0)
    seq = decode(rng.integers(4, 8, 600)) + "N" * 400
    fa = tmp_path / "n.fa"
    fa.write_text(f">c1\n{seq}\n")
    vcf = _write_vcf(tmp_path / "n.vcf", "c1", [(700, "A", "C"), (800, "N", "G"), (900, "C", "T")])
    s = run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model="kmer2:1", out=str(tmp_path / "n.tsv")), progress=False)
    err = capsys.readouterr().err
    assert s.scored == 0 and s.on_n == 3
    assert s.skipped == {"ref_mismatch": 2, "ambiguous_base": 1}
    assert "nothing was scored: 3 of 3 ALT alleles sit on N" in err


class _NanMasked:
    """A masked scorer whose predictions are NaN at odd positions of the window."""

    is_causal = False
    name = "nan-masked"

    def masked_log_probs(self, ids):
        lp = torch.full((*ids.shape, 4), math.log(0.25))
        lp[:, 1::2] = float("nan")
        return lp


def test_non_finite_scores_are_a_counted_status(small_ref, tmp_path):
    fa, vcf, _ = small_ref
    out = tmp_path / "f.tsv"
    # --context 4: the centre is index 1 (NaN) -> every SNV non-finite; --context 5: centre 2 (finite)
    s = run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model="x", out=str(out), context=4), scorer=_NanMasked(),
            progress=False)
    assert s.scored == 0 and s.skipped["nonfinite"] == 4
    assert all(r["mlm_llr"] == "." for r in _rows(out))
    s = run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model="x", out=str(out), context=5), scorer=_NanMasked(),
            progress=False)
    assert s.scored == 4 and "nonfinite" not in s.skipped


def test_allele_windows_place_the_allele_at_the_centre():
    x = encode("ACGTACGTAC")
    ref, alt = allele_windows(x, np.array([4, 1]), [encode("A"), encode("CG")], [encode("AGG"), encode("C")], 6)
    # centre (6-1)//2 = 2: two bases left, the allele, then the contig after the REF allele
    assert decode(ref[0]) == "GTACGT" and decode(alt[0]) == "GTAGGC"
    assert decode(ref[1]) == "NACGTA" and decode(alt[1]) == "NACTAC"


def test_trained_length(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"seq_len": 256}))
    assert trained_length(str(run_dir / "model")) == 256
    assert trained_length("hf:kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16") == 131072
    assert trained_length("hf:kuleshov-group/PlantCaduceus_l20") == 512
    assert trained_length(str(tmp_path)) is None


# ------------------------------------------------------------------ Caduceus fixture checkpoints


@pytest.fixture(scope="module")
def brca1():
    if not BRCA1.is_file():
        pytest.skip(f"{BRCA1} not present")
    g = Genome(BRCA1)
    return g, g.tokens(CONTIG)[0]


def _brca1_vcf(tmp_path, x) -> Path:
    """SNVs in the middle, one 100 bp from the contig start (edge), an insertion, a deletion."""
    s = decode(x[620000:620100])
    rows = [(620001 + i, s[i], _other(s[i], k)) for i, k in ((0, 1), (0, 2), (7, 3), (40, 1))]
    rows += [(100, decode(x[99:100]), _other(decode(x[99:100])))]
    rows += [(620061, s[60], s[60] + "T"), (620081, s[80:83], s[80])]
    return _write_vcf(tmp_path / "b.vcf", CONTIG, rows)


@pytest.mark.parametrize("name", ["caduceus_ps", "caduceus_plant", "caduceus_ph"])
def test_fixture_caduceus_through_score_equals_hand_window(name, brca1, tmp_path, capsys):
    d = MODELS / name
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    g, x = brca1
    vcf = _brca1_vcf(tmp_path, x)
    out = tmp_path / "s.tsv"
    code, err = _cli(["score", "-i", str(vcf), "-f", str(BRCA1), "--model", str(d), "-o", str(out),
                      "--scores", "mlm,llr,emb", "--device", "cpu"], capsys)
    assert code == 0, err
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["edge"] + ["ok"] * 2
    for r in rows[5:]:  # indels: emb only
        assert r["mlm_llr"] == "." and r["llr"] == "." and float(r["emb_cos"]) >= 0
    model = load_model(d)
    # EMB of the insertion by hand: REF / ALT windows, strand-symmetric final states, mean-pooled
    ins = rows[5]
    p = int(ins["pos"]) - 1
    ref_w = x[p - 255 : p + 257]
    alt_w = np.concatenate([x[p - 255 : p], encode(ins["alt"]), x[p + 1 : p + 1 + 512]])[:512]
    with torch.no_grad():
        h = [model.hidden(torch.from_numpy(w.astype(np.int64))[None], rc_average=True)[0].double().mean(0)
             for w in (ref_w, alt_w)]
    assert float(ins["emb_cos"]) == pytest.approx(float(1 - torch.cosine_similarity(h[0], h[1], 0)), rel=2e-3)
    assert float(ins["emb_l2"]) == pytest.approx(float((h[1] - h[0]).norm()), rel=2e-3)
    both = masked_strands(model) == "both"
    assert both == (name == "caduceus_ph")
    for r in rows[:5]:
        want = _hand_llr(model, x, int(r["pos"]) - 1, r["ref"], r["alt"], both)
        assert float(r["mlm_llr"]) == pytest.approx(want, rel=2e-4, abs=2e-5), r
        assert float(r["mlm_llr"]) != pytest.approx(float(r["llr"]), rel=1e-3)  # unmasked differs
    # without emb the indels pass through with a status naming why
    code, err = _cli(["score", "-i", str(vcf), "-f", str(BRCA1), "--model", str(d), "-o", str(out),
                      "--device", "cpu"], capsys)
    assert code == 0, err
    assert [r["status"] for r in _rows(out)][5:] == ["not_snv_masked_model"] * 2
    assert "skipped: not_snv_masked_model 2" in err


def test_ps_strands_agree_ph_strands_differ(brca1):
    g, x = brca1
    pos = np.array([620000, 620007, 620040, 700123])
    ref = x[pos]
    alt = (ref - 4 + 1) % 4 + 4
    got = {}
    for name in ("caduceus_ps", "caduceus_plant", "caduceus_ph"):
        d = MODELS / name
        if not d.is_dir():
            pytest.skip(f"{d} not present")
        m = load_model(d)
        f = mlm_llr(m, x, pos, ref, alt, strands="forward").score
        b = mlm_llr(m, x, pos, ref, alt, strands="both").score
        got[name] = np.abs(f - b).max()
        assert np.isfinite(f).all()
    assert got["caduceus_ps"] < 1e-4 and got["caduceus_plant"] < 1e-4
    assert got["caduceus_ph"] > 1e-3  # the check can tell: Ph is not equivariant


def test_context_longer_than_trained_warns(brca1, tmp_path, capsys):
    d = MODELS / "caduceus_ps"
    if not d.is_dir():
        pytest.skip(f"{d} not present")
    g, x = brca1
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"seq_len": 128}))
    (run_dir / "model").symlink_to(d)
    vcf = _brca1_vcf(tmp_path, x)
    s = run_score(ScoreConfig(vcf=str(vcf), fasta=str(BRCA1), model=str(run_dir / "model"), out=str(tmp_path / "c.tsv"),
                        context=300, device="cpu"), progress=False)
    assert s.scored == 5
    assert "--context 300 is longer than the 128 bp windows" in capsys.readouterr().err


def test_kmer2_vcf_output_reads_back_for_eval(small_ref, tmp_path):
    from mamba_dna.pipelines.score import evaluate_labelled, read_scored

    fa, vcf, _ = small_ref
    # a truth VCF with a label on the four SNVs (the first two positive)
    lines = vcf.read_text().splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    truth = tmp_path / "t.vcf"
    truth.write_text('##fileformat=VCFv4.2\n##INFO=<ID=Y,Number=1,Type=Integer,Description="y">\n' + lines[-len(body) - 1]
                     + "\n" + "".join("\t".join([*ln.split("\t")[:7], f"Y={int(i < 2)}"]) + "\n"
                                      for i, ln in enumerate(body[:4])))
    out = tmp_path / "s.vcf"
    run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model="kmer2:2", out=str(out)), progress=False)
    text = out.read_text()
    assert "##INFO=<ID=MDNA_MLM_LLR,Number=A,Type=Float" in text and "MDNA_DLL" not in text
    rows = read_scored(str(out))
    assert [r["status"] for r in rows][-3:] == ["not_snv_masked_model", "not_snv_masked_model", "ref_mismatch"]
    r = evaluate_labelled(str(out), str(truth), "Y", score="mlm_llr")
    assert r["n"] == 4 and r["n_pos"] == 2 and 0.0 <= r["value"] <= 1.0
