"""`score`: the fast path equals the naive per-variant computation; the VCF pipeline's edges."""

from __future__ import annotations

import math

import numpy as np
import pysam
import pytest
import torch

from mamba_dna.baselines import MarkovModel
from mamba_dna.errors import ConfigError, InputError
from mamba_dna.io.vcf import VcfReader, read_tsv
from mamba_dna.model import MambaConfig, MambaLM
from mamba_dna.pipelines.score import (
    ScoreConfig,
    evaluate_labelled,
    merge_outputs,
    naive_scores,
    parse_region,
    parse_shard,
    read_scored,
    run_score,
    score_contig,
    snapshot_positions,
)
from mamba_dna.tokenizer import decode, encode


def _tiny_mamba(seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=32, n_layer=2)).eval()


def _variants(x: np.ndarray):
    """SNVs, an insertion, a deletion, an MNV, both contig ends, next to an N and block edges."""
    L = x.size
    spec = [(0, 1, "C"), (5, 1, None), (15, 1, None), (16, 1, None), (17, 1, "+AC"), (40, 3, "-"),
            (60, 2, "GT"), (99, 1, None), (L - 1, 1, None), (L - 3, 3, "-")]
    starts, refs, alts = [], [], []
    for p, m, a in spec:
        ref = decode(x[p : p + m])
        if a is None or (m == 1 and a == ref):
            a = "ACGT"[("ACGT".index(ref) + 1) % 4]
        elif a == "+AC":
            a = ref + "AC"
        elif a == "-":
            a = ref[0]
        starts.append(p)
        refs.append(encode(ref))
        alts.append(encode(a))
    return starts, refs, alts


@pytest.mark.parametrize("kind", ["markov", "mamba"])
def test_fast_path_equals_naive_both_strands(kind):
    rng = np.random.default_rng(0)
    x = rng.integers(4, 8, 260).astype(np.uint8)  # (L,) ids A..T
    x[100] = 8  # an N in the context
    scorer = MarkovModel(3).fit([x]) if kind == "markov" else _tiny_mamba()
    starts, refs, alts = _variants(x)
    # small blocks/chunks/batches so snapshots, chunk edges and batching are all exercised
    fast = score_contig(scorer, x, starts, refs, alts, window=40, snapshot_every=8, chunk=37, batch_size=3)
    tol = dict(rtol=1e-6, atol=1e-6) if kind == "markov" else dict(rtol=1e-4, atol=2e-4)
    n_llr = 0
    for k in range(len(starts)):
        nv = naive_scores(scorer, x, starts[k], refs[k], alts[k], window=40)
        for c in ("llr", "dll", "dll_norm"):
            if math.isnan(nv[c]):
                assert math.isnan(fast[c][k]), (k, c)
            else:
                np.testing.assert_allclose(fast[c][k], nv[c], **tol, err_msg=f"variant {k} {c}")
        n_llr += not math.isnan(nv["llr"])
        assert not math.isnan(fast["dll"][k])
    assert n_llr == 6  # SNVs (incl. both contig ends, one strand each)
    assert fast["edge"].tolist()[0] and fast["edge"].tolist()[-1] and not fast["edge"].tolist()[7]
    # LLR is antisymmetric: swapping REF and ALT on the reference with ALT would flip it; here
    # check a simpler invariant: ALT == REF gives exactly 0
    same = score_contig(scorer, x, [50], [x[50:51]], [x[50:51]], window=40, snapshot_every=8)
    assert abs(same["llr"][0]) < 1e-6 and abs(same["dll"][0]) < 1e-4


def test_llr_only_pass_matches_with_and_without_dll():
    x = np.random.default_rng(1).integers(4, 8, 500).astype(np.uint8)
    net = _tiny_mamba(1)
    starts, refs, alts = _variants(x)
    a = score_contig(net, x, starts, refs, alts, want_dll=False, chunk=64)
    b = score_contig(net, x, starts, refs, alts, window=30, chunk=1000)
    np.testing.assert_allclose(a["llr"], b["llr"], rtol=1e-4, atol=1e-5)
    assert np.isnan(a["dll"]).all()


def testsnapshot_positions_cover_clusters_with_short_prefixes():
    q = np.array([500, 3, 3, 10, 40, 41, 1000, 44, 2, 499])
    b = snapshot_positions(q, 8)
    assert (b <= q).all() and (q - b < 8).all()
    assert b.tolist() == [499, 2, 2, 10, 40, 40, 1000, 40, 2, 499]  # lone variants: no prefix
    assert len(np.unique(b)) == 5 and snapshot_positions(np.zeros(0, np.int64), 8).size == 0


# ----------------------------------------------------------------------------- the pipeline


@pytest.fixture()
def ref_vcf(tmp_path):
    rng = np.random.default_rng(7)
    c1 = decode(rng.integers(4, 8, 900))
    mt = decode(rng.integers(4, 8, 300))
    fa = tmp_path / "ref.fa"
    fa.write_text(f">1 chromosome\n{c1[:450]}\n{c1[450:]}\n>MT\n{mt}\n")
    wrong = "ACGT"[("ACGT".index(c1[199]) + 1) % 4]
    rows = [
        ("chr1", 101, c1[100], f"{'ACGT'[('ACGT'.index(c1[100]) + 1) % 4]},{'ACGT'[('ACGT'.index(c1[100]) + 2) % 4]}"),
        ("chr1", 200, wrong, "A" if wrong != "A" else "C"),  # REF mismatch
        ("chr1", 50, c1[49], "<DEL>,*"),  # symbolic + star, and out of position order
        ("chrM", 10, mt[9:12], mt[9]),  # deletion
        ("chr1", 300, c1[299], c1[299] + "GG"),  # contig seen again (unsorted)
        ("chrUn", 5, "A", "C"),  # not in the reference
        ("chrM", 290, mt[289], "ACGT"[("ACGT".index(mt[289]) + 3) % 4]),
        ("chr1", 899, c1[898], "N"),  # ambiguous ALT
    ]
    header = (
        "##fileformat=VCFv4.2\n##contig=<ID=chr1,length=900>\n##contig=<ID=chrM,length=300>\n"
        "##contig=<ID=chrUn,length=10>\n"
        '##INFO=<ID=Y,Number=1,Type=Integer,Description="label">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    )
    body = "".join(f"{c}\t{p}\tv{i}\t{r}\t{a}\t.\t.\tY={i % 2}\n" for i, (c, p, r, a) in enumerate(rows))
    vcf = tmp_path / "in.vcf"
    vcf.write_text(header + body)
    return fa, vcf, rows


def _cfg(fa, vcf, out, **kw):
    base = dict(vcf=str(vcf), fasta=str(fa), model="markov:3", out=str(out), window=40, snapshot_every=16)
    base.update(kw)
    return ScoreConfig(**base)


def test_pipeline_tsv_statuses_order_and_counts(ref_vcf, tmp_path):
    fa, vcf, rows = ref_vcf
    out = tmp_path / "o.tsv"
    s = run_score(_cfg(fa, vcf, out, tsv_info=("Y",)))
    _, header, got = read_tsv(out)
    assert header == ["chrom", "pos", "id", "ref", "alt", "llr", "dll", "dll_norm", "status", "y"]
    # one row per ALT, in input order (records are unsorted and contigs interleaved)
    expect_ids = [f"v{i}" for i, r in enumerate(rows) for _ in r[3].split(",")]
    assert [g[2] for g in got] == expect_ids
    st = {(g[2], g[4]): g[8] for g in got}
    assert st[("v1", rows[1][3])] == "ref_mismatch"
    assert st[("v2", "<DEL>")] == "symbolic_alt" and st[("v2", "*")] == "star_allele"
    assert st[("v5", "C")] == "unknown_contig"
    assert st[("v7", "N")] == "ambiguous_base"
    by = {(g[2], g[4]): g for g in got}
    multi = [by[("v0", a)] for a in rows[0][3].split(",")]
    assert all(m[8] == "ok" and m[5] != "." for m in multi) and multi[0][5] != multi[1][5]
    assert by[("v3", rows[3][3])][5] == "." and by[("v3", rows[3][3])][6] != "."  # deletion: DLL only
    assert s.scored == 5 and s.alts == 10
    assert dict(s.skipped) == {"ref_mismatch": 1, "symbolic_alt": 1, "star_allele": 1,
                               "unknown_contig": 1, "ambiguous_base": 1}


def test_pipeline_vcf_output_readable_by_pysam(ref_vcf, tmp_path):
    fa, vcf, rows = ref_vcf
    out = tmp_path / "o.vcf"
    run_score(_cfg(fa, vcf, out))
    vf = pysam.VariantFile(str(out))
    for key in ("MDNA_LLR", "MDNA_DLL", "MDNA_DLL_NORM", "MDNA_STATUS"):
        assert vf.header.info[key].number == "A"
    recs = list(vf)
    assert [r.id for r in recs] == [f"v{i}" for i in range(len(rows))]
    assert len(recs[0].info["MDNA_LLR"]) == 2 and recs[0].info["MDNA_STATUS"] == ("ok", "ok")
    assert recs[2].info["MDNA_STATUS"] == ("symbolic_alt", "star_allele")
    assert recs[0].info["Y"] == 0  # input INFO kept
    # the same numbers as the TSV
    tsv = tmp_path / "o.tsv"
    run_score(_cfg(fa, vcf, tsv))
    a = [r["llr"] for r in read_scored(str(out))]
    b = [r["llr"] for r in read_scored(str(tsv))]
    assert a == b


def test_strict_ref_mismatch_and_unknown_contig_are_errors(ref_vcf, tmp_path):
    fa, vcf, _ = ref_vcf
    with pytest.raises(InputError, match=r"in\.vcf:8: REF \w at chr1:200 does not match the reference"):
        run_score(_cfg(fa, vcf, tmp_path / "o.tsv", strict=True))
    assert not (tmp_path / "o.tsv").exists()  # atomic: nothing half-written
    lines = vcf.read_text().splitlines()
    only_un = tmp_path / "un.vcf"
    only_un.write_text("\n".join(lines[:6] + [lines[6], lines[11]]) + "\n")  # v0, then chrUn
    with pytest.raises(InputError, match=r"un\.vcf:8: VCF contig 'chrUn' is not in the reference"):
        run_score(_cfg(fa, only_un, tmp_path / "o.tsv", strict=True))
    s = run_score(_cfg(fa, only_un, tmp_path / "o.tsv"))  # without --strict: flagged and counted
    assert s.skipped == {"unknown_contig": 1} and s.scored == 2


def test_contig_alias_option_and_clear_message(ref_vcf, tmp_path):
    fa, vcf, _ = ref_vcf
    # every contig renamed: nothing matches -> one clear error, no output
    text = vcf.read_text().replace("chrUn\t", "chr1\t").replace("chr1\t", "NC_0001\t")
    text = text.replace("chrM\t", "NC_0002\t")
    v2 = tmp_path / "renamed.vcf"
    v2.write_text(text)
    with pytest.raises(InputError, match=r"--chrom-alias NC_0001=RECORD"):
        run_score(_cfg(fa, v2, tmp_path / "x.tsv"))
    assert not (tmp_path / "x.tsv").exists()
    alias = tmp_path / "alias.txt"
    alias.write_text("NC_0001\t1\nNC_0002\tMT\n")
    for spec in ("NC_0001=1,NC_0002=MT", str(alias)):
        s = run_score(_cfg(fa, v2, tmp_path / "y.tsv", chrom_alias=spec))
        assert "unknown_contig" not in s.skipped
        # the former chrUn record (REF 'A' at 5) now lands on record 1: scored or flagged
        assert s.scored + s.skipped["ref_mismatch"] == 5 + 1 + 1


def test_shards_merged_equal_single_run(ref_vcf, tmp_path):
    fa, vcf, _ = ref_vcf
    for ext in (".tsv", ".vcf.gz"):
        single = tmp_path / f"single{ext}"
        run_score(_cfg(fa, vcf, single))
        parts = []
        for i in (2, 0, 1):
            p = tmp_path / f"part{i}{ext}"
            run_score(_cfg(fa, vcf, p, shard=f"{i}/3"))
            parts.append(str(p))
        merged = tmp_path / f"merged{ext}"
        merge_outputs(parts, str(merged))
        assert read_scored(str(merged)) == read_scored(str(single))
        with pytest.raises(InputError, match="expected shards 0..n-1"):
            merge_outputs(parts[:2], str(tmp_path / f"bad{ext}"))


def test_region_and_option_parsing(ref_vcf, tmp_path):
    fa, vcf, _ = ref_vcf
    out = tmp_path / "r.tsv"
    run_score(_cfg(fa, vcf, out, region="chr1:100-250"))
    _, _, rows = read_tsv(out)
    assert sorted({r[2] for r in rows}) == ["v0", "v1"]
    assert parse_region("chr2:1,000-2,000") == ("chr2", 999, 2000)
    assert parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "a/b"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    with pytest.raises(ConfigError):
        parse_region("chr1:5-2")
    with pytest.raises(ConfigError):
        _cfg(fa, vcf, out, scores=("llr", "cadd"))
    with pytest.raises(ConfigError, match="--out"):
        run_score(_cfg(fa, vcf, tmp_path / "o.bed"))


def test_markov_auto_and_saved_markov(ref_vcf, tmp_path):
    fa, vcf, _ = ref_vcf
    s = run_score(_cfg(fa, vcf, tmp_path / "a.tsv", model="markov:auto", scores=("llr",)))
    assert s.scored == 5
    m = MarkovModel(2).fit([encode("ACGTTGCAAGT" * 20)])
    m.save(tmp_path / "m.npz")
    s = run_score(_cfg(fa, vcf, tmp_path / "b.tsv", model=str(tmp_path / "m.npz")))
    assert s.scored == 5
    with pytest.raises(ConfigError, match="markov:K"):
        run_score(_cfg(fa, vcf, tmp_path / "c.tsv", model="markov:six"))


def test_network_model_directory_end_to_end(ref_vcf, tmp_path):
    fa, vcf, _ = ref_vcf
    d = tmp_path / "model"
    _tiny_mamba(3).save_pretrained(d)
    out = tmp_path / "n.tsv"
    s = run_score(_cfg(fa, vcf, out, model=str(d), batch_size=2))
    assert s.scored == 5
    _, header, rows = read_tsv(out)
    ok = [r for r in rows if r[8] in ("ok", "edge")]
    assert all(r[6] != "." for r in ok)


def test_cli_one_line_error_and_eval(ref_vcf, tmp_path, capsys):
    from mamba_dna.cli import main

    fa, vcf, _ = ref_vcf
    with pytest.raises(SystemExit) as e:
        main(["score", "--vcf", str(vcf), "--fasta", str(fa), "--model", "markov:3",
              "--out", str(tmp_path / "c.tsv"), "--strict"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "mamba-dna: error:" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["score", "--vcf", str(vcf), "--fasta", str(fa), "--model", "markov:3",
              "--out", str(tmp_path / "c.tsv"), "--window", "40", "--tsv-info", "Y"])
    assert e.value.code == 0 and (tmp_path / "c.tsv").is_file()


def _labelled(tmp_path, info, columns, cells):
    """A truth VCF (INFO `info(i)` on SNV i of 10) and a scored TSV (score `columns`, values
    `cells(i)`) in tmp_path -> (scored path, truth path)."""
    truth = tmp_path / "t.vcf"
    body = "".join(f"c\t{i + 1}\t.\tA\tC\t.\t.\t{info(i)}\n" for i in range(10))
    truth.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + body)
    scored = tmp_path / "s.tsv"
    lines = ["\t".join(["chrom", "pos", "id", "ref", "alt", *columns, "status"])]
    lines += [f"c\t{i + 1}\t.\tA\tC\t{cells(i)}\tok" for i in range(10)]
    scored.write_text("\n".join(lines) + "\n")
    return scored, truth


def test_evaluate_labelled_metrics(tmp_path):
    scored, truth = _labelled(tmp_path, lambda i: f"Y={int(i < 5)};F={-i}", ["llr"],
                              lambda i: -10 + i if i != 9 else ".")
    r = evaluate_labelled(str(scored), str(truth), "Y", "auroc")
    assert r["value"] == pytest.approx(1.0) and r["n"] == 9 and r["missing_score"] == 1
    r = evaluate_labelled(str(scored), str(truth), "F", "spearman", threshold=-4.5)
    assert r["value"] == pytest.approx(-1.0)


def test_real_mtdna_set_markov_is_near_chance(tmp_path, shared_data):
    d = shared_data / "variants/human_mt_mitomap"
    out = tmp_path / "mt.tsv"
    s = run_score(ScoreConfig(vcf=str(d / "mt_labeled_pathogenic_vs_common.vcf.gz"), fasta=str(d / "rCRS_MT.fasta"),
                        model="markov:6", out=str(out), scores=("llr",)))
    assert s.scored == 437 and not s.skipped
    r = evaluate_labelled(str(out), str(d / "mt_labeled_pathogenic_vs_common.vcf.gz"), "Y")
    assert r["n"] == 437 and 0.35 < r["value"] < 0.65  # FACTS.md: k-mer statistics are at chance here
    assert len(list(VcfReader(d / "mt_labeled_pathogenic_vs_common.vcf.gz"))) == 437


def test_context_option_equals_scoring_the_trimmed_contig():
    rng = np.random.default_rng(5)
    x = rng.integers(4, 8, 600).astype(np.uint8)
    net = _tiny_mamba(2)
    starts = [250, 260, 300, 347]
    refs = [x[p : p + 1] for p in starts]
    alts = [np.array([4 + (int(r[0]) - 3) % 4], np.uint8) for r in refs]
    C, block = 50, 8
    got = score_contig(net, x, starts, refs, alts, window=40, snapshot_every=block, context=C)
    # forward pass starts at 200 (block-aligned 250 - 50); reverse at 600 - 348 - 50 -> 200
    lo, hi = 200, 600 - 200
    want = score_contig(net, x[lo:hi], [p - lo for p in starts], refs, alts, window=40, snapshot_every=block)
    for c in ("llr", "dll", "dll_norm"):
        np.testing.assert_allclose(got[c], want[c], rtol=1e-5, atol=1e-5)
    markov = MarkovModel(3).fit([x])
    a = score_contig(markov, x, starts, refs, alts, window=40, snapshot_every=block, context=C)
    b = score_contig(markov, x, starts, refs, alts, window=40, snapshot_every=block)
    np.testing.assert_allclose(a["dll"], b["dll"], rtol=1e-9)  # finite context >= k: no change


# ----------------------------------------------------------------------------- embedding distance


@pytest.mark.parametrize("layer", [None, 1])
def test_emb_fast_path_equals_two_full_haplotypes_through_hidden(layer):
    """EMB from the pass + ALT re-runs == mean-pooled MambaLM.hidden of both whole haplotypes."""
    rng = np.random.default_rng(3)
    x = rng.integers(4, 8, 200).astype(np.uint8)  # (L,)
    net = _tiny_mamba(4)
    # SNVs (one at the contig start, one at a block edge), an insertion, a deletion, an MNV
    starts = [0, 16, 33, 70, 121, 198]
    refs = [x[0:1], x[16:17], x[33:34], x[70:73], x[121:123], x[198:199]]
    alts = [np.array([4 + (int(r[0]) - 3) % 4], np.uint8) for r in refs]
    alts[2] = np.concatenate([x[33:34], encode("TTA")])  # insertion
    alts[3] = x[70:71]  # deletion of 2 bases
    alts[4] = np.array([4 + (int(b) - 2) % 4 for b in refs[4]], np.uint8)  # MNV
    fast = score_contig(net, x, starts, refs, alts, want_llr=False, want_dll=False, want_emb=True,
                        emb_layer=layer, window=30, snapshot_every=8, chunk=45, batch_size=4)
    for k in range(len(starts)):
        nv = naive_scores(net, x, starts[k], refs[k], alts[k], window=30, emb_layer=layer)
        for c in ("emb_cos", "emb_l2", "dll"):
            np.testing.assert_allclose(fast[c][k], nv[c], rtol=1e-4, atol=1e-5, err_msg=f"variant {k} {c}")
        assert nv["emb_cos"] > 1e-6 and nv["emb_l2"] > 1e-6  # a real change, not a trivial zero
    assert np.isnan(fast["llr"]).all()  # not asked for
    # ALT == REF: both pools are the same hidden states
    same = score_contig(net, x, [50], [x[50:51]], [x[50:51]], want_emb=True, emb_layer=layer, window=30, snapshot_every=8)
    assert abs(same["emb_cos"][0]) < 1e-6 and abs(same["emb_l2"][0]) < 1e-5


def test_emb_needs_a_network_model_and_a_valid_layer(ref_vcf, tmp_path):
    fa, vcf, _ = ref_vcf
    with pytest.raises(ConfigError, match="no embeddings"):
        run_score(_cfg(fa, vcf, tmp_path / "m.tsv", scores=("llr", "emb")))
    assert not (tmp_path / "m.tsv").exists()
    x = np.random.default_rng(0).integers(4, 8, 100).astype(np.uint8)
    with pytest.raises(ConfigError, match="no embeddings"):
        score_contig(MarkovModel(2).fit([x]), x, [10], [x[10:11]], [x[11:12]], want_emb=True)
    d = tmp_path / "model"
    _tiny_mamba(3).save_pretrained(d)  # 2 blocks: layers -3 .. 2
    with pytest.raises(ConfigError, match=r"--emb-layer 3: expected an integer in \[-3, 2\]"):
        run_score(_cfg(fa, vcf, tmp_path / "n.tsv", model=str(d), scores=("emb",), emb_layer=3))
    with pytest.raises(ConfigError, match="--emb-layer 'last'"):
        _cfg(fa, vcf, tmp_path / "n.tsv", model=str(d), scores=("emb",), emb_layer="last")
    assert _cfg(fa, vcf, tmp_path / "n.tsv", emb_layer="-1").emb_layer == -1
    assert _cfg(fa, vcf, tmp_path / "n.tsv", emb_layer="final").emb_layer is None


def test_cli_emb_with_markov_is_one_line(ref_vcf, tmp_path, capsys):
    from mamba_dna.cli import main

    fa, vcf, _ = ref_vcf
    with pytest.raises(SystemExit) as e:
        main(["score", "--vcf", str(vcf), "--fasta", str(fa), "--model", "markov:3",
              "--out", str(tmp_path / "c.tsv"), "--scores", "llr,emb", "--emb-layer", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no embeddings" in err and "Traceback" not in err


def test_emb_in_vcf_and_tsv_outputs_and_eval_direction(ref_vcf, tmp_path):
    fa, vcf, _ = ref_vcf
    d = tmp_path / "model"
    _tiny_mamba(3).save_pretrained(d)
    out = tmp_path / "e.vcf.gz"
    s = run_score(_cfg(fa, vcf, out, model=str(d), scores=("llr", "dll", "emb"), emb_layer=-1, batch_size=2))
    assert s.scored == 5
    vf = pysam.VariantFile(str(out))
    for key in ("MDNA_EMB_COS", "MDNA_EMB_L2"):
        assert vf.header.info[key].number == "A" and "layer -1" in vf.header.info[key].description
    rows = read_scored(str(out))
    ok = [r for r in rows if r["status"] in ("ok", "edge")]
    assert len(ok) == 5 and all(float(r["emb_cos"]) >= 0 and float(r["emb_l2"]) > 0 for r in ok)
    assert all(r["emb_cos"] == "." for r in rows if r["status"] not in ("ok", "edge"))
    tsv = tmp_path / "e.tsv"
    run_score(_cfg(fa, vcf, tsv, model=str(d), scores=("emb",), emb_layer=-1))
    _, header, _ = read_tsv(tsv)
    assert header[5:8] == ["emb_cos", "emb_l2", "status"]
    assert [r["emb_l2"] for r in read_scored(str(tsv))] == [r["emb_l2"] for r in rows]
    # eval: a distance ranks larger values as damaging (predictor +score), LLR-like scores -score
    scored, truth = _labelled(tmp_path, lambda i: f"Y={int(i >= 5)}", ["llr", "emb_cos"],
                              lambda i: f"{-i}\t{0.1 * i}")
    for col, pred in (("llr", "-llr"), ("emb_cos", "+emb_cos")):
        r = evaluate_labelled(str(scored), str(truth), "Y", "auroc", score=col)
        assert r["value"] == pytest.approx(1.0) and r["predictor"] == pred
    with pytest.raises(InputError, match="no 'dll' values"):
        evaluate_labelled(str(scored), str(truth), "Y", "auroc", score="dll")


def test_emb_when_the_model_runs_long_inputs_in_tiles(monkeypatch):
    """On CPU MambaLM runs a long call in tiles along L (one hooked-module call per tile):
    EMB must join the tiles (before the scorer protocol moved, only the last tile was read)."""
    monkeypatch.setenv("MAMBA_DNA_CPU_TILE", "1")  # tiles of 1,024 tokens
    net = _tiny_mamba(4)
    x = np.random.default_rng(3).integers(4, 8, 2600).astype(np.uint8)  # (L,): 3 tiles per pass
    starts = [300, 1200]
    refs = [x[p : p + 1] for p in starts]
    alts = [np.array([4 + (int(r[0]) - 3) % 4], np.uint8) for r in refs]
    # window 2200: a re-run is 1 + 1100 tokens > one tile
    fast = score_contig(net, x, starts, refs, alts, want_emb=True, emb_layer=1, window=2200, snapshot_every=8)
    for k in range(len(starts)):
        nv = naive_scores(net, x, starts[k], refs[k], alts[k], window=2200, emb_layer=1)
        for c in ("emb_cos", "emb_l2", "dll"):
            np.testing.assert_allclose(fast[c][k], nv[c], rtol=1e-4, atol=1e-6, err_msg=f"variant {k} {c}")
