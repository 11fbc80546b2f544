"""Variant scoring speed (ours vs the naive per-variant method) and zero-shot metrics.

    .venv/bin/python bench/score.py                  # speed table + labelled metrics (Markov)
    .venv/bin/python bench/score.py --model DIR      # metrics of a trained model as well
    .venv/bin/python bench/score.py --quick          # smaller subsamples (a smoke run)

Speed: the same random-init MambaLM (2 layers, d_model 128) for both methods, same machine,
same run. "naive" is what peers do: for each variant, two forwards over a window of
`window + 1` bases centred on it (REF haplotype and ALT haplotype), batch 1, one strand; its
LLR is read at the centre of the REF forward and its DLL is the ALT - REF window sum. The
naive method is timed on a random subsample of variants and extrapolated linearly to the whole
set (it is too slow to run on all: the table says how many were timed). Ours: LLR over the
whole set (one streaming pass per strand); DLL (with LLR) timed on a subsample and
extrapolated as pass time + per-variant re-run time x N (+ the pass's extra calls at the
state snapshots, counted exactly for the whole set). "+EMB" adds the embedding distance to the
same run (it rides on the DLL re-runs). Ours scores both strands; the naive method one.
Tokens per variant: naive 2 x (window + 1) on one strand; ours, DLL, (window // 2 + 1 +
prefix) per strand on two strands. On a quiet machine a batch-1 forward of 2 kb costs about
what our batched re-runs cost per token (11 vs 12 us/token, 2x128 model), so an exact DLL is
at most ~1.9x the naive method there; on a loaded machine the naive method's many small
batch-1 calls suffer more (4.5x-13x seen), hence the round-robin below. LLR needs no re-runs.
Every timing is the minimum of `--repeats` rounds; a round times every method once, back to
back, so that the load of a shared machine hits them alike.

Metrics: `score` + `evaluate_labelled` on the labelled sets for markov:6 and, with --model, a
network model (its rows add EMB_COS / EMB_L2: AUROC ranks larger distances as damaging).

Masked models (`--masked`; `--masked-only` skips the causal tables):
* speed: MLM_LLR (`mamba_dna.mlm.mlm_llr`, one masked 512 bp window per distinct position, the
  variant at 255, batched as `score` batches) on the BRCA1 SNVs with a random Caduceus-PS of
  PlantCaduceus_l20's size (d_model 384, 20 layers), beside the SAME windows through the plain
  sequential-scan peer (bench/caduceus.py's "peer": the real code's structure, one slow-path
  Mamba call per strand and direction, with a PyTorch loop over positions that materialises
  (batch, d_inner, L, d_state); padded F.conv1d; no tiling), whose MLM_LLR is checked against
  ours first. Ours runs on
  `--masked-n` distinct positions (all if 0) and the peer on `--peer-n` (it is slow); both are
  extrapolated linearly to the whole set, and the table says how many were timed. Unmasked LLR
  (`unmasked_llr`: 512 bp tiles every 256 bp holding a variant, every SNV read off them) runs on
  the SNVs of `--tiles-n` tiles (all if 0), extrapolated per tile. Per variant, MLM_LLR costs
  one 512-token window per distinct position and the unmasked LLR one per 256 bp tile holding
  a variant: at equal cost per window the ratio is (positions / tiles), printed beside the
  measured one (BRCA1's SNVs are dense in exons, so this bound is far below 100x).
* metrics: AUROC of zero-shot scores on BRCA1 (LOF vs the rest) and human mtDNA (pathogenic vs
  common) through the whole `score` path: kmer2:auto (MLM_LLR), markov:auto (LLR) and the
  PlantCaduceus-layout fixture checkpoint (a random model: plumbing only), + `--masked-model`.
"""

from __future__ import annotations

import argparse  # noqa: E402
import os
import sys
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import best_of, cpu_model  # noqa: E402 (bench/_common.py)

from mamba_dna.genome import Genome  # noqa: E402
from mamba_dna.io.vcf import VcfReader  # noqa: E402
from mamba_dna.model import MambaConfig, MambaLM  # noqa: E402
from mamba_dna.pipelines.score import (  # noqa: E402
    ScoreConfig,
    evaluate_labelled,
    run_score,
    score_contig,
    snapshot_positions,
)
from mamba_dna.tokenizer import encode  # noqa: E402

DATA = Path(os.environ.get("MAMBA_DNA_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))
V = DATA / "variants"
SETS = {
    "sarscov2": (V / "sarscov2_ntfitness/ntmut_fitness.vcf.gz", V / "sarscov2_ntfitness/MN908947_wuhan-hu-1.fasta"),
    "brca1": (V / "brca1_sge_findlay2018/brca1_sge.vcf.gz", V / "brca1_sge_findlay2018/BRCA1_region_GRCh38.fasta.gz"),
    "mtdna": (V / "human_mt_mitomap/mt_labeled_pathogenic_vs_common.vcf.gz", V / "human_mt_mitomap/rCRS_MT.fasta"),
}


def load_set(name):
    vcf, fa = SETS[name]
    g = Genome(fa, invalid="N")
    recs = [r for r in VcfReader(vcf) if len(r.alts) == 1 and len(r.ref) == 1 and len(r.alts[0]) == 1]
    chrom = g.resolve(recs[0].chrom)
    x, _ = g.tokens(chrom)  # (L,) uint8
    starts = np.array([r.start for r in recs])
    refs = [encode(r.ref) for r in recs]
    alts = [encode(r.alts[0]) for r in recs]
    return x, starts, refs, alts


@torch.inference_mode()
def naive(model, x, starts, refs, alts, window):
    """Two centred-window forwards per variant (REF, ALT), batch 1: peers' method."""
    half = window // 2
    out = []
    for p, r, a in zip(starts, refs, alts, strict=True):
        lo, hi = max(0, p - half), min(x.size, p + half + 1)
        ref_w = x[lo:hi].astype(np.int64)
        alt_w = ref_w.copy()
        alt_w[p - lo] = a[0]
        tot = []
        for w in (ref_w, alt_w):
            lp, _ = model.log_probs(torch.from_numpy(w)[None])  # (1, len, 4)
            lp = lp[0].double()
            tgt = torch.from_numpy(w[1:] - 4)
            tot.append(float(lp[:-1].gather(1, tgt[:, None]).sum()))
            if w is ref_w:
                row = lp[p - lo - 1]
                llr = float(row[int(a[0]) - 4] - row[int(r[0]) - 4])
        out.append((llr, tot[1] - tot[0]))
    return out


def _snapshot_cuts(x, starts, idx):
    """Pass calls added by the state snapshots of variants `idx` (both strands), exactly."""
    q = starts[idx]
    return len(np.unique(snapshot_positions(q, 128))) + len(np.unique(snapshot_positions(x.size - q - 1, 128)))


def _one_set(model, name, ctx, args, rng):
    """Timings of one variant set -> table rows."""
    x, starts, refs, alts = load_set(name)
    n = len(starts)
    k_naive, k_dll = min(n, args.naive_n), min(n, args.dll_n)
    sub_n = rng.choice(n, k_naive, replace=False)
    sub_d = rng.choice(n, k_dll, replace=False)
    kw = dict(window=args.window, context=ctx, batch_size=args.batch_size)

    def ours(idx, want_dll, stats=None, want_emb=False):
        return score_contig(model, x, starts[idx], [refs[i] for i in idx], [alts[i] for i in idx],
                            want_dll=want_dll, want_emb=want_emb, stats=stats, **kw)

    def peers():
        return naive(model, x, starts[sub_n], [refs[i] for i in sub_n], [alts[i] for i in sub_n], args.window)

    everything = np.arange(n)
    cuts_sub, cuts_all = _snapshot_cuts(x, starts, sub_d), _snapshot_cuts(x, starts, everything)
    # the machine is shared: every round times each method once, back to back, so load
    # changes hit them alike; each figure is the minimum over the rounds
    timed = {"naive": [], "llr": [], "pass_sub": [], "dll": [], "emb": []}
    for _ in range(args.repeats):
        timed["naive"].append((best_of(peers, 1), None))
        timed["llr"].append((best_of(lambda: ours(everything, False), 1), None))
        timed["pass_sub"].append((best_of(lambda: ours(sub_d, False), 1), None))
        for key, emb in (("dll", False), ("emb", True)):
            if emb and not args.emb:
                continue
            st: dict = {}
            t = time.perf_counter()
            ours(sub_d, True, st, emb)
            timed[key].append((time.perf_counter() - t, st))
    t_llr = min(t for t, _ in timed["llr"])
    t_pass_sub = min(t for t, _ in timed["pass_sub"])

    def extrapolated(key):
        """DLL (+EMB) on the subsample; the full-set time from its parts:
        LLR pass over the whole set (measured) + the pass's extra calls at the snapshots
        (per-cut cost from the subsample x the full set's count) + ALT re-runs (per variant x N)."""
        t_sub, st = min(timed[key], key=lambda r: r[0])
        per_cut = max(st["pass_s"] - t_pass_sub, 0.0) / max(cuts_sub, 1)
        per_var = st["rerun_s"] / k_dll
        print(f"[{name}] {key.upper()} subsample of {k_dll}: {t_sub:.1f}s = pass {st['pass_s']:.1f}s "
              f"({st['pass_calls']} calls) + re-runs {st['rerun_s']:.1f}s ({st['rerun_calls']} calls, "
              f"{st['rerun_tokens']:,} tokens); LLR-only pass of the subsample {t_pass_sub:.1f}s; "
              f"per cut {per_cut:.3f}s ({cuts_all} cuts in the full set), per variant {per_var:.3f}s",
              file=sys.stderr)
        return t_llr + per_cut * cuts_all + per_var * n

    t_dll = extrapolated("dll")
    t_emb = extrapolated("emb") if args.emb else None
    t_naive = min(t for t, _ in timed["naive"]) / k_naive * n
    ctx_s = "whole contig" if ctx is None else f"{ctx:,} bp"
    rows = [
        (name, n, x.size, "naive (2 windows/variant, 1 strand)", f"{k_naive} timed, extrapolated",
         t_naive, n / t_naive, None, None),
        (name, n, x.size, f"ours LLR (2 strands, context {ctx_s})", "all measured",
         t_llr, n / t_llr, t_naive / t_llr, None),
        (name, n, x.size, f"ours LLR+DLL (2 strands, context {ctx_s})",
         f"DLL {k_dll} timed, extrapolated", t_dll, n / t_dll, None, t_naive / t_dll),
    ]
    if t_emb is not None:
        rows.append((name, n, x.size, f"ours LLR+DLL+EMB (2 strands, context {ctx_s})",
                     f"DLL+EMB {k_dll} timed, extrapolated", t_emb, n / t_emb, None, t_naive / t_emb))
    return rows


def _x(v):
    return "" if v is None else f"{v:,.1f}x"


def speed(args):
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=128, n_layer=2)).eval()
    rng = np.random.default_rng(0)
    rows = []
    for name, ctx in (("sarscov2", None), ("brca1", args.brca1_context)):
        if name in args.speed_sets.split(","):
            rows += _one_set(model, name, ctx, args, rng)
    print(f"\n## Variant scoring speed: {cpu_model()}, {os.cpu_count()} CPUs (shared, loaded), "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"MambaLM 2 layers d_model 128 (random init), window {args.window}, min of {args.repeats} runs, "
          f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| set | variants | contig bp | method | measured | time (s) | variants/s | LLR speed-up | DLL speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, L, meth, how, t, vps, su_l, su_d in rows:
        print(f"| {name} | {n:,} | {L:,} | {meth} | {how} | {t:,.1f} | {vps:,.2f} | {_x(su_l)} | {_x(su_d)} |")


def metrics(args):
    out = []
    specs = [
        ("brca1", "Y", "auroc", "LOF vs FUNC+INT"),
        ("mtdna", "Y", "auroc", "pathogenic vs common"),
        ("sarscov2", "FITNESS", "spearman", "Spearman vs fitness"),
    ]
    specs = [sp for sp in specs if sp[0] in args.sets.split(",")]
    models = [("markov:6", "markov-6 (fit on the reference)", ("llr", "dll"))]
    if args.model:
        models.append((args.model, f"model {args.model}", ("llr", "dll", "emb")))
    with tempfile.TemporaryDirectory() as td:
        for spec, label_m, scores in models:
            for name, label, metric, what in specs:
                vcf, fa = SETS[name]
                dst = str(Path(td) / f"{name}.tsv")
                t = time.perf_counter()
                ctx = args.brca1_context if name == "brca1" else None
                run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model=spec, out=dst, window=args.window,
                                context=ctx, scores=scores, emb_layer=args.emb_layer))
                dt = time.perf_counter() - t
                cols = ("llr", "dll") + (("emb_cos", "emb_l2") if "emb" in scores else ())
                for col in cols:
                    r = evaluate_labelled(dst, str(vcf), label, metric, score=col)
                    out.append((label_m, name, what, col, r["n"], r["value"], dt))
    print("\n## Zero-shot metrics on labelled variants (AUROC of -score, of +score for the emb "
          "distances; Spearman of score)\n")
    print("| scorer | set | task | score | n | value | run time (s) |")
    print("|---|---|---|---|---|---|---|")
    for m, name, what, col, n, v, dt in out:
        print(f"| {m} | {name} | {what} | {col} | {n:,} | {v:.3f} | {dt:.1f} |")


MODELS = DATA / "models"


def _ps_l20():
    from mamba_dna.caduceus import CaduceusLM, ModelConfig

    torch.manual_seed(0)
    return CaduceusLM(ModelConfig(d_model=384, n_layer=20, bidirectional=True, rcps=True)).eval()


class _Peer:
    """Within the block, Caduceus runs as bench/caduceus.py's peer (the real code's structure)."""

    def __enter__(self):
        from caduceus import use_peer  # bench/caduceus.py

        import mamba_dna.caduceus as cad

        self._cad, self._real, self._fwd = cad, cad.selective_scan_fn, cad.BiMamba.forward
        self._env = {k: os.environ.get(k) for k in ("MAMBA_DNA_BACKEND", "MAMBA_DNA_CPU_TILE")}
        use_peer("peer")
        return self

    def __exit__(self, *exc):
        self._cad.selective_scan_fn = self._real
        self._cad.BiMamba.forward = self._fwd
        for k, v in self._env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def masked_speed(args):
    from mamba_dna.mlm import mlm_llr, unmasked_llr
    from mamba_dna.pipelines.score.masked import masked_batch

    model = _ps_l20()
    x, starts, refs, alts = load_set("brca1")
    ref1 = np.array([r[0] for r in refs])
    alt1 = np.array([a[0] for a in alts])
    uniq = np.unique(starts)
    n_all, u_all = starts.size, uniq.size
    bs = args.batch_size or masked_batch(model, 512, None)
    rng = np.random.default_rng(0)

    def subset(k):
        if k <= 0 or k >= u_all:
            return np.arange(n_all), u_all
        pick = np.sort(rng.choice(uniq, k, replace=False))
        return np.flatnonzero(np.isin(starts, pick)), k

    def timed(fn, idx):
        t = time.perf_counter()
        res = fn(model, x, starts[idx], ref1[idx], alt1[idx], batch_size=bs)
        return time.perf_counter() - t, res

    # the peer first on a few positions (its MLM_LLR must equal ours), then ours
    p_idx, p_u = subset(args.peer_n)
    with _Peer():
        t_peer, r_peer = timed(mlm_llr, p_idx)
    t_ours_p, r_ours_p = timed(mlm_llr, p_idx)
    diff = float(np.nanmax(np.abs(r_peer.score - r_ours_p.score)))
    o_idx, o_u = subset(args.masked_n)
    t_ours, r_ours = timed(mlm_llr, o_idx)
    tile_of = starts // 256  # unmasked_llr's tiles (stride 256) holding a variant
    tiles = np.unique(tile_of)
    if 0 < args.tiles_n < tiles.size:
        u_idx = np.flatnonzero(np.isin(tile_of, rng.choice(tiles, args.tiles_n, replace=False)))
    else:
        u_idx = np.arange(n_all)
    t_unm, r_unm = timed(unmasked_llr, u_idx)
    per_pos_ours, per_pos_peer = t_ours / o_u, t_peer / p_u
    full_ours, full_peer = per_pos_ours * u_all, per_pos_peer * u_all
    full_unm = t_unm / r_unm.n_windows * tiles.size
    print(f"\n## MLM_LLR speed, BRCA1 SGE ({n_all:,} SNVs at {u_all:,} distinct positions): {cpu_model()}, "
          f"{os.cpu_count()} CPUs (shared with other jobs), {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, random Caduceus-PS d_model 384 x 20 layers "
          f"({model.num_parameters() / 1e6:.1f}M parameters), 512 bp windows, batch {bs}, fp32, CPU\n")
    print(f"peer check: max |MLM_LLR ours - peer| over {p_idx.size} SNVs = {diff:.2e}\n")
    print("| method | positions timed | SNVs timed | time (s) | SNVs/s | whole set (s) | note |")
    print("|---|---|---|---|---|---|---|")
    print(f"| peer (sequential scan) MLM_LLR | {p_u:,} | {p_idx.size:,} | {t_peer:,.1f} | "
          f"{p_idx.size / t_peer:,.2f} | {full_peer:,.0f} (extrapolated) | |")
    print(f"| ours MLM_LLR, same positions | {p_u:,} | {p_idx.size:,} | {t_ours_p:,.1f} | "
          f"{p_idx.size / t_ours_p:,.2f} | | {t_peer / t_ours_p:,.1f}x the peer |")
    how = "measured" if o_u == u_all else "extrapolated"
    print(f"| ours MLM_LLR | {o_u:,} | {o_idx.size:,} | {t_ours:,.1f} | {o_idx.size / t_ours:,.2f} | "
          f"{full_ours:,.0f} ({how}) | {full_peer / full_ours:,.1f}x the peer per position |")
    per_var = (t_ours / o_idx.size) / (t_unm / u_idx.size)
    how_u = "measured" if u_idx.size == n_all else "extrapolated"
    print(f"| ours unmasked LLR (approximation) | {r_unm.n_windows:,} tiles | {u_idx.size:,} | {t_unm:,.1f} | "
          f"{u_idx.size / t_unm:,.2f} | {full_unm:,.0f} ({how_u}) | {per_var:,.1f}x MLM_LLR per variant |")
    print(f"\nwindows for the whole set: MLM_LLR {u_all:,} (one per distinct position), unmasked LLR "
          f"{tiles.size:,} tiles (512 bp every 256 bp holding a variant): per-variant bound "
          f"{u_all / tiles.size:,.1f}x at equal cost per window")
    print(f"whole BRCA1 set with this model on this machine: MLM_LLR {full_ours:,.0f} s ({full_ours / 60:,.1f} min, "
          f"{how}), unmasked LLR {full_unm:,.0f} s ({how_u}), peer MLM_LLR {full_peer:,.0f} s (extrapolated)")


def masked_metrics(args):
    specs = [("brca1", "LOF vs FUNC+INT"), ("mtdna", "pathogenic vs common")]
    models = [("kmer2:auto", "kmer2:auto (fit on the reference)", ("mlm",), "mlm_llr"),
              ("markov:auto", "markov:auto (fit on the reference)", ("llr",), "llr")]
    plant = MODELS / "caduceus_plant"
    if plant.is_dir():
        models.append((str(plant), "PlantCaduceus-layout fixture (random, 2x32)", ("mlm", "llr"), "mlm_llr,llr"))
    if args.masked_model:
        models.append((args.masked_model, f"model {args.masked_model}", ("mlm", "llr"), "mlm_llr,llr"))
    out = []
    with tempfile.TemporaryDirectory() as td:
        for spec, label_m, scores, cols in models:
            for name, what in specs:
                vcf, fa = SETS[name]
                dst = str(Path(td) / f"{name}.tsv")
                t = time.perf_counter()
                res = run_score(ScoreConfig(vcf=str(vcf), fasta=str(fa), model=spec, out=dst, scores=scores,
                                      device="cpu"), progress=False)
                dt = time.perf_counter() - t
                for col in cols.split(","):
                    r = evaluate_labelled(dst, str(vcf), "Y", "auroc", score=col)
                    out.append((label_m, name, what, col, r["n"], r["n_pos"], r["value"], res.scored, dt))
    print("\n## Zero-shot AUROC through `score` (AUROC of -score; masked models: mlm_llr = MLM_LLR, "
          "llr = the unmasked approximation)\n")
    print("| scorer | set | task | score | n | positives | AUROC | scored ALTs | run time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m, name, what, col, n, npos, v, sc, dt in out:
        print(f"| {m} | {name} | {what} | {col} | {n:,} | {npos:,} | {v:.3f} | {sc:,} | {dt:.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a trained model directory to evaluate on the labelled sets")
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--naive-n", type=int, default=20, help="variants timed for the naive method")
    ap.add_argument("--dll-n", type=int, default=64, help="variants timed for our DLL")
    ap.add_argument("--batch-size", type=int, default=None, help="ALT re-runs per call (default: score's auto)")
    ap.add_argument("--brca1-context", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny subsamples, 1 repeat")
    ap.add_argument("--emb", action=argparse.BooleanOptionalAction, default=True,
                    help="time the LLR+DLL+EMB row too")
    ap.add_argument("--emb-layer", default=None, help="EMB layer for --model (default: final norm)")
    ap.add_argument("--sets", default="brca1,mtdna,sarscov2", help="labelled sets for the metrics")
    ap.add_argument("--speed-sets", default="sarscov2,brca1", help="sets for the speed table")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-metrics", action="store_true")
    ap.add_argument("--masked", action="store_true", help="also the masked-model tables (MLM_LLR)")
    ap.add_argument("--masked-only", action="store_true", help="only the masked-model tables")
    ap.add_argument("--masked-n", type=int, default=0, help="distinct positions timed for ours (0: all)")
    ap.add_argument("--peer-n", type=int, default=2, help="distinct positions timed for the peer")
    ap.add_argument("--tiles-n", type=int, default=4, help="256 bp tiles timed for the unmasked LLR (0: all)")
    ap.add_argument("--masked-model", default=None, help="a masked model directory for the AUROC table")
    args = ap.parse_args()
    if not (V / "sarscov2_ntfitness").is_dir():
        print(f"shared data not found at {DATA} (set MAMBA_DNA_DATA); nothing to measure")
        return 0
    if args.quick:
        args.naive_n, args.dll_n, args.repeats = 3, 8, 1
    if not args.masked_only:
        if not args.skip_speed:
            speed(args)
        if not args.skip_metrics:
            metrics(args)
    if args.masked or args.masked_only:
        if not args.skip_speed:
            masked_speed(args)
        if not args.skip_metrics:
            masked_metrics(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
