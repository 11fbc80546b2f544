"""OUT/report.md (every figure beside its baseline) and the headline printed on stdout."""

from __future__ import annotations

import math
import os
from pathlib import Path

from mamba_dna import __version__
from mamba_dna.fsutil import atomic_path

from .config import FITNESS_BAD


def fmt(v, nd: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"


def _rel(path: str, out: Path) -> str:
    return os.path.relpath(path, out)


def write_report(res: dict, out: Path) -> Path:
    """OUT/report.md: every figure with its baseline; plots linked relative to OUT."""
    c, sc, em, cl = res["config"], res["score"], res["embed"], res["classify"]
    L = [f"# mamba-dna demo{' (quick mode: toy scale, figures mean little)' if c['quick'] else ''}", ""]
    L += [f"mamba-dna {__version__}, {res['machine']}; data: `{res['data']}`; "
          f"total wall time {res['total_seconds']:.0f} s"
          + (f" (load average at the end {res['load_end']:.1f})" if res.get("load_end") is not None else "")
          + ".", ""]
    if "model" in res:  # --model: no pretraining
        first = _given_model_section(res["model"])
    else:
        first = (_data_section(res["tokenize"], out) + _pretrain_section(c, res["pretrain"], out)
                 + _mlm_section(res.get("pretrain_mlm"), out))
    for section in (first, _score_section(sc, out),
                    _embed_section(em, out), _classify_section(c, cl, out), _timings_section(res),
                    NOTES):
        L += section
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(L))
    return path


def _data_section(tk: dict, out: Path) -> list[str]:
    L: list[str] = []
    L += ["## 1. Data and tokenization", "",
          f"Pretraining corpus: {len(tk['files'])} FASTA files, {tk['bases']:,} bp (one reference "
          "genome per virus species, no dengue; three mitochondrial genomes). Windows of "
          f"{tk['window']:,} bp; {tk['block']:,} bp position blocks dealt to train / val / test "
          "(regions held out, not records): "
          + ", ".join(f"{k} {v:,}" for k, v in tk["windows"].items()) + " windows.", "",
          "Files: " + ", ".join(f"`{f}`" for f in tk["files"]), ""]
    return L


def _pretrain_section(c: dict, pt: dict, out: Path) -> list[str]:
    L: list[str] = []
    cal = pt["calibration"]
    budget = (f"a {pt['budget_minutes']:g}-minute budget (calibrated: {cal['step_s']:.2f} s per step, "
              f"first step {cal['first_step_s']:.1f} s)" if cal else f"a fixed {pt['planned_steps']} steps")
    L += ["## 2. Pretraining", "",
          f"Mamba LM, n_layer {pt['n_layer']}, d_model {pt['d_model']} ({pt['parameters'] or 0:,} "
          f"parameters), next-base prediction on {pt['batch_size']} x {pt['seq_len']:,} bp per step, "
          f"reverse-complement augmentation; {pt['steps']} steps ({pt['tokens']:,} tokens) in "
          f"{pt['seconds']:.0f} s on {pt['device']}, {budget}."
          + (f" Stopped after {pt['steps']} of {pt['planned_steps']} planned steps at 1.5x the "
             "budget: the machine was busier than during calibration."
             if pt["steps"] < pt["planned_steps"] else ""), "",
          "| model (validation: held-out regions) | bits per base |", "|---|---|",
          f"| Mamba LM, final | {fmt(pt['val_bits_per_base'], 4)} |",
          f"| Mamba LM, best | {fmt(pt['best_val_bits_per_base'], 4)} |",
          f"| Markov, order {pt['markov_order']} (best of orders "
          f"{c['preset']['markov_orders'][0]}-{c['preset']['markov_orders'][-1]} on validation) "
          f"| {fmt(pt['markov_bits_per_base'], 4)} |",
          "| uniform | 2.0000 |", "",
          f"Validation: {pt['val_bases'] or 0:,} bases. Near-identical genomes were left out of "
          "the corpus, so a held-out region has no copy in training (three ebolavirus species "
          "and human/chimpanzee mtDNA are related, for both models alike).", "",
          f"![training curve]({_rel(pt['curve'], out)})", ""]
    return L


def _given_model_section(m: dict) -> list[str]:
    return ["## 1. Data and tokenization", "", "Skipped: `--model` was given, nothing is pretrained.", "",
            "## 2. Model (given, no pretraining)", "",
            f"`{m['spec']}` ({m['model_dir']}): {m['kind']}, n_layer {m['n_layer']}, d_model "
            f"{m['d_model']}, {m['parameters']:,} parameters"
            + ("; a masked model: variants are scored by MLM_LLR (the variant masked in a 512 bp "
               "window) beside the two-sided k-mer model." if m["masked"] else "."), ""]


def _mlm_section(pm: dict | None, out: Path) -> list[str]:
    """The bidirectional stage: the masked model beside the two-sided k-mer model."""
    if not pm:
        return []
    cal = pm["calibration"]
    budget = (f"a {pm['budget_minutes']:g}-minute budget (calibrated: {cal['step_s']:.2f} s per step)"
              if cal else f"a fixed {pm['planned_steps']} steps")
    return ["### Masked language model (bidirectional)", "",
            f"Caduceus-PS (reverse-complement equivariant BiMamba), n_layer {pm['n_layer']}, d_model "
            f"{pm['d_model']} ({pm['parameters'] or 0:,} parameters), trained as Caduceus is: 15% of "
            "bases chosen (80% masked, 10% a random base, 10% kept), loss on those only; same "
            f"windows and split as above; {pm['steps']} steps ({pm['tokens']:,} tokens) in "
            f"{pm['seconds']:.0f} s, {budget}.", "",
            "| masked model (validation: the same masked positions) | masked bits per base |", "|---|---|",
            f"| Caduceus-PS, final | {fmt(pm['val_bits_per_base'], 4)} |",
            f"| Caduceus-PS, best | {fmt(pm['best_val_bits_per_base'], 4)} |",
            f"| two-sided k-mer, k={pm['kmer2_k']} (k bases each side; k chosen on validation) "
            f"| {fmt(pm['kmer2_bits_per_base'], 4)} |",
            "| uniform | 2.0000 |", "",
            f"Masked validation bases: {pm['val_bases'] or 0:,}. The one-sided Markov bar above is "
            "not a fair one for a model that sees both sides of the base.", "",
            f"![masked LM training curve]({_rel(pm['curve'], out)})", ""]


def _score_section(sc: dict, out: Path) -> list[str]:
    L: list[str] = []
    L += ["## 3. Zero-shot variant effect scores", "",
          "LLR = log P(alt) - log P(ref) at the SNV given its context, both strands averaged "
          "(one streaming pass per strand, the fast path). SARS-CoV-2: Spearman rho of LLR vs "
          f"the fitness estimate (and AUROC of FITNESS < {FITNESS_BAD:g}); mtDNA: AUROC of "
          "-LLR for pathogenic vs common.", ""]
    if sc["sets"][0]["scorers"]["network"].get("score") == "mlm_llr":
        L += ["The given model is a masked LM: its score (and the two-sided k-mer model's) is "
              "MLM_LLR = log P(alt) - log P(ref) with the variant masked in a 512 bp window "
              "(PlantCaduceus's zero-shot score); the Markov rows are LLR as above.", ""]
    if sc.get("region"):
        L += [f"(quick mode: only the variants in the first {sc['region']:,} bp of SARS-CoV-2 are scored)", ""]
    keys = list(sc["sets"][0]["scorers"])
    L += ["| variant set | metric | n | " + " | ".join(sc["sets"][0]["scorers"][k]["name"] for k in keys) + " |",
          "|---|---|---|" + "---|" * len(keys)]
    for s in sc["sets"]:
        vals = [s["scorers"][k] for k in keys]
        L.append(f"| {s['set']} | {'Spearman rho' if s['metric'] == 'spearman' else 'AUROC'} | "
                 f"{vals[0]['n']:,} | " + " | ".join(fmt(v["value"]) for v in vals) + " |")
        if s["metric"] == "spearman":
            L.append(f"| {s['set']} | AUROC (FITNESS < {FITNESS_BAD:g}) | {vals[0]['n']:,} | "
                     + " | ".join(fmt(v["auroc_below"]) for v in vals) + " |")
    L += ["", "Scorers: " + "; ".join(f"**{sc['sets'][0]['scorers'][k]['name']}** = "
                                      f"{sc['sets'][0]['scorers'][k]['desc']}" for k in keys) + ".",
          "Chance is rho 0 / AUROC 0.5. Where a model's figure is close to Markov-0's, its LLR "
          "says little beyond base composition.", "",
          f"![score distributions]({_rel(sc['plot'], out)})", ""]
    return L


def _embed_section(em: dict, out: Path) -> list[str]:
    L: list[str] = []
    L += ["## 4. Embeddings", "",
          f"`{_rel(em['h5'], out)}`: {em['n']} dengue genomes ({em['bp']:,} bp), mean-pooled final "
          f"hidden state (d = {em['d']}), forward strand; no dengue genome was in pretraining"
          + (f" (quick mode: the first {em['quick_bp']} bp of each genome)" if em.get("quick_bp") else "")
          + ". Serotypes: "
          + ", ".join(f"{k} {v}" for k, v in em["classes"].items()) + ".", "",
          "| features (whole genomes) | leave-one-out 1-NN serotype accuracy |", "|---|---|",
          f"| Mamba embeddings | {fmt(em['loo_1nn_model'])} |",
          f"| 4-mer profiles (baseline) | {fmt(em['loo_1nn_kmer'])} |", "",
          f"![PCA of embeddings]({_rel(em['plot'], out)})", ""]
    return L


def _classify_section(c: dict, cl: dict, out: Path) -> list[str]:
    L: list[str] = []
    L += ["## 5. Species classification", "",
          f"Dengue serotype (labels from record names) from one {cl['window']:,} bp window; "
          "whole genomes held out for validation and test (`classify train --split-by record`), "
          "balanced classes, logistic regression on each feature set (k of the k-mer profile "
          f"chosen on validation among {', '.join(map(str, c['preset']['kmer_ks'] or (3, 4, 5, 6)))}).", "",
          "| features | test accuracy | balanced accuracy | n test windows |", "|---|---|---|---|"]
    for k in ("model", "kmer"):
        r = cl[k]
        name = "Mamba embeddings" if k == "model" else f"k-mer profile (k={r['features'].split('-')[-1]})"
        L.append(f"| {name} | {fmt(r['accuracy'])} | {fmt(r['balanced_accuracy'])} | {r['n']} |")
    L += ["", f"![confusion, model]({_rel(cl['plots']['confusion_model'], out)}) "
          f"![confusion, k-mer]({_rel(cl['plots']['confusion_kmer'], out)})", "",
          "Accuracy vs window length (test windows from held-out genomes):", "",
          "| window (bp) | Mamba embeddings | k-mer profile | k | train windows per class |",
          "|---|---|---|---|---|"]
    for r in cl["length_table"]:
        L.append(f"| {r['window']:,} | {fmt(r.get('model_accuracy'))} | {fmt(r.get('kmer_accuracy'))} "
                 f"| {r.get('kmer_k', '')} | {r.get('n_train_per_class', '')} |")
    L += ["", f"![accuracy vs window length]({_rel(cl['plots']['accuracy_vs_length'], out)})", ""]
    return L


def _timings_section(res: dict) -> list[str]:
    L: list[str] = []
    L += ["## 6. Timings", "", "Wall-clock and CPU seconds (all threads of the process; "
          "on a shared machine the wall time depends on the load, the CPU time much less).", "",
          "| stage | wall s | CPU s |", "|---|---|---|"]
    L += [f"| {k} | {v:.1f} | {res['stage_cpu_seconds'].get(k, float('nan')):.1f} |"
          for k, v in res["stage_seconds"].items()]
    L += [f"| total | {res['total_seconds']:.1f} | {res['total_cpu_seconds']:.1f} |", ""]
    return L


NOTES = ["## Notes", "",
      "- A few CPU minutes of pretraining make a small model: compare each figure with its "
      "baseline on the same data, not with published models trained for GPU-days.",
      "- k-mer statistics are strong on these tasks; the Markov and k-mer rows say what "
      "counting alone gets.",
      "- Re-run with a bigger budget: `mamba-dna demo --minutes 30`, or use the commands "
      "themselves (`mamba-dna tokenize / pretrain / score / embed / classify`).", ""]


def headline(res: dict) -> dict:
    """The figures printed on stdout (also in summary.json)."""
    sc, em, cl = res["score"], res["embed"], res["classify"]
    h: dict = {}
    if "pretrain" in res:
        pt = res["pretrain"]
        h.update({"pretrain_val_bits_per_base": pt["val_bits_per_base"],
                  "markov_val_bits_per_base": pt["markov_bits_per_base"], "markov_order": pt["markov_order"]})
    if res.get("pretrain_mlm"):
        pm = res["pretrain_mlm"]
        h.update({"mlm_val_masked_bits_per_base": pm["val_bits_per_base"],
                  "kmer2_val_masked_bits_per_base": pm["kmer2_bits_per_base"], "kmer2_k": pm["kmer2_k"]})
    for s in sc["sets"]:
        for k, v in s["scorers"].items():
            h[f"{s['key']}_{s['metric']}_{k}"] = v["value"]
    h.update({"embed_loo_1nn_model": em["loo_1nn_model"], "embed_loo_1nn_kmer": em["loo_1nn_kmer"],
              "classify_accuracy_model": cl["model"]["accuracy"],
              "classify_accuracy_kmer": cl["kmer"]["accuracy"],
              "total_seconds": res["total_seconds"]})
    return h


def format_headline(res: dict) -> str:
    """What `mamba-dna demo` prints on stdout: where everything went + the headline figures."""
    sc, em, cl = res["score"], res["embed"], res["classify"]
    model = res["model"]["model_dir"] if "model" in res else res["pretrain"]["model_dir"]
    rows = [("report", res["report"]), ("model", model),
            ("embeddings", em["h5"]), ("classifiers", cl["dir"])]
    if "pretrain" in res:
        pt = res["pretrain"]
        rows.append(("pretrain", f"validation {fmt(pt['val_bits_per_base'], 4)} bits/base after "
                                 f"{pt['steps']} steps / {pt['tokens']:,} tokens (Markov order "
                                 f"{pt['markov_order']}: {fmt(pt['markov_bits_per_base'], 4)}, uniform 2)"))
    if res.get("pretrain_mlm"):
        pm = res["pretrain_mlm"]
        rows.append(("pretrain-mlm", f"Caduceus-PS validation {fmt(pm['val_bits_per_base'], 4)} masked "
                                     f"bits/base after {pm['steps']} steps (two-sided k-mer k="
                                     f"{pm['kmer2_k']}: {fmt(pm['kmer2_bits_per_base'], 4)}, uniform 2)"))
    for s in sc["sets"]:
        v = s["scorers"]
        metric = "Spearman rho" if s["metric"] == "spearman" else "AUROC"
        peers = ", ".join(f"{x['name']} {fmt(x['value'])}" for k, x in v.items() if k != "network")
        rows.append(("score", f"{s['set']}: {metric} {fmt(v['network']['value'])} ({peers}), "
                              f"n={v['network']['n']:,}"))
    rows.append(("embed", f"{em['n']} dengue genomes: serotype LOO 1-NN {fmt(em['loo_1nn_model'])} "
                          f"(4-mer profiles {fmt(em['loo_1nn_kmer'])})"))
    rows.append(("classify", f"dengue serotype from {cl['window']:,} bp windows of held-out genomes: "
                             f"accuracy {fmt(cl['model']['accuracy'])} (k-mer "
                             f"{fmt(cl['kmer']['accuracy'])})"))
    rows.append(("total", f"{res['total_seconds']:.0f} s wall, {res['total_cpu_seconds']:.0f} s CPU"))
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)

