"""Species classification on the shared real genomes: the model beside the k-mer baseline.

    .venv/bin/python bench/classify.py                       # all tasks, random-init model
    .venv/bin/python bench/classify.py --model DIR           # a trained model
    .venv/bin/python bench/classify.py --tasks ebola,dengue  # a subset
    .venv/bin/python bench/classify.py --quick               # fewer windows, short lengths
    .venv/bin/python bench/classify.py --model DIR --finetune 100 --finetune-max 2048
                                       # + fine-tuned backbone (100 steps) up to 2,048 bp rows
    .venv/bin/python bench/classify.py --arch caduceus-ps    # a random-init bidirectional model
    .venv/bin/python bench/classify.py --model hf:kuleshov-group/caduceus-ps_seqlen-131k_d_model-256_n_layer-16

Every task runs `classify train` (pipelines.classify.run_train): same leakage-free split,
same balanced windows, same classifier (standardise + logistic regression, C by CV) for the
model's pooled embeddings (mean, strand-symmetric: reverse-complement averaged; a Caduceus-PS
averages its two RC halves) and for k-mer profiles (k in 3..6 picked on val). With
--finetune N, a fresh copy of the backbone is also fine-tuned end to end (last-token head for
causal models, mean-pooled for bidirectional ones, sequence-length warmup, N AdamW steps) for
each row up to
--finetune-max bp and scored on the same test windows. Prints one table: test accuracy per
task and window length, with the seconds each column took (features + fit, or fine-tuning;
shared, noisy machine: single runs, so read the seconds as orders of magnitude).
Reports, confusion PNGs and classifiers land in --out (default a temp folder).
"""

from __future__ import annotations

import argparse  # noqa: E402
import os
import platform  # noqa: E402
import sys
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

DATA = Path(os.environ.get("MAMBA_DNA_DATA", Path(__file__).resolve().parents[1] / "../shared/data"))
LABELS = DATA / "species/labels.tsv"

# name -> (ClassifyConfig fields, what it tests)
TASKS = {
    "ebola": (dict(group="virus", include="ebolavirus", split_by="block", window=1024,
                   lengths=(1024, 2048, 4096), per_class=32),
              "3 ebolavirus species, position blocks held out (same regions in every species)"),
    "dengue": (dict(include="dengue_all_sequences", label_from_record=r"_(DENV[1-4])$",
                    split_by="record", window=2048, lengths=(1024, 2048, 4096, 8192), per_class=32),
               "dengue serotypes 1-4 (label from record name), whole genomes held out"),
    "mpox": (dict(include="mpox_clade", split_by="record", window=4096,
                  lengths=(1024, 4096, 16384), per_class=24),
             "mpox clade I vs IIb, whole genomes held out"),
    "phage": (dict(group="phage", split_by="block", window=1024, lengths=(1024, 2048),
                   per_class=32),
              "lambda vs phiX174 vs phiX174-like isolates, blocks held out"),
    "bacteria": (dict(group="bacteria", split_by="file", window=4096,
                      lengths=(1024, 4096, 16384), per_class=16),
                 "E. coli vs H. pylori, whole strains (files) held out"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="model directory or hf:ORG/NAME [random-init 2 x 64 of --arch]")
    ap.add_argument("--arch", default="mamba", choices=("mamba", "caduceus-ph", "caduceus-ps"),
                    help="the random-init model's architecture (without --model)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--finetune", type=int, default=0, metavar="STEPS",
                    help="also fine-tune end to end, STEPS optimizer steps per row [0: off]")
    ap.add_argument("--finetune-max", type=int, default=4096,
                    help="fine-tune only rows with windows up to this many bp")
    ap.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate")
    ap.add_argument("--finetune-pool", default=None,
                    help="fine-tuning head: last | mean [last for causal, mean for bidirectional]")
    ap.add_argument("--kmer-ks", default="3,4,5,6")
    ap.add_argument("--per-class", type=int, help="train windows per class [per task]")
    ap.add_argument("--rows", type=int, help="only the first ROWS window lengths of each task")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    if not LABELS.exists():
        print(f"skip: {LABELS} not found (set MAMBA_DNA_DATA)")
        return
    from mamba_dna.errors import InputError
    from mamba_dna.model import MambaConfig, MambaLM
    from mamba_dna.pipelines.classify import ClassifyConfig, FinetuneConfig, run_train

    out = Path(a.out or tempfile.mkdtemp(prefix="bench-classify-"))
    model = a.model
    if not model:
        torch.manual_seed(0)
        if a.arch == "mamba":
            net = MambaLM(MambaConfig(d_model=64, n_layer=2))
        else:
            from mamba_dna.caduceus import CaduceusLM, ModelConfig

            net = CaduceusLM(ModelConfig(d_model=64, n_layer=2, bidirectional=True,
                                         rcps=a.arch == "caduceus-ps"))
        model = str(net.save_pretrained(out / "model"))
    from mamba_dna.load import load_model
    from mamba_dna.pipelines.embed import architecture

    loaded = load_model(model)
    arch = f"{architecture(loaded)} {loaded.config.n_layer} x d_model {loaded.config.d_model}"
    del loaded
    rows = []
    for name in a.tasks.split(","):
        kw, what = TASKS[name]
        kw = dict(kw)
        if a.quick:
            kw["per_class"] = 8
            kw["lengths"] = kw["lengths"][:2]
        if a.per_class:
            kw["per_class"] = a.per_class
        if a.rows:
            kw["lengths"] = kw["lengths"][: a.rows]
        kmer_ks = tuple(int(k) for k in a.kmer_ks.split(","))
        ft = (FinetuneConfig(steps=a.finetune, lr=a.lr, warmup_start=512, pool=a.finetune_pool)
              if a.finetune else None)
        for L in kw["lengths"]:  # one run per row: fine-tuning only where it is cheap enough
            cfg = ClassifyConfig(labels=str(LABELS), out=str(out / name / str(L)), model=model,
                                 rc_average=True, kmer_ks=kmer_ks, device=a.device,
                                 finetune=ft if L <= a.finetune_max else None,
                                 **{**kw, "window": L, "lengths": (L,)})
            try:
                rep = run_train(cfg)
            except InputError as e:  # e.g. a genome too short for three disjoint blocks
                print(f"{name} {L}: skipped ({e})", file=sys.stderr)
                continue
            rows += [(name, r) for r in rep["length_table"]]
        print(f"{name}: {what} -> {out / name}/report.md", file=sys.stderr)

    print(f"# classify: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}; "
          f"model {model} ({arch}, {'random init' if not a.model else 'given'}); "
          + (f"fine-tuned ({a.finetune_pool or 'default'}-pooled head) {a.finetune} steps, lr {a.lr}, "
             f"up to {a.finetune_max} bp; "
             if a.finetune else "") + "single runs")
    print("| task | window | train/test per class | probe acc | finetuned acc | k-mer acc (k) "
          "| probe s | finetune s | k-mer s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        ft_acc = f"{r['finetuned_accuracy']:.3f}" if "finetuned_accuracy" in r else "-"
        ft_s = f"{r['finetuned_seconds']:.0f}" if "finetuned_seconds" in r else "-"
        print(f"| {name} | {r['window']} | {r['n_train_per_class']}/{r['n_test_per_class']} | "
              f"{r.get('model_accuracy', float('nan')):.3f} | {ft_acc} | {r['kmer_accuracy']:.3f} "
              f"({r['kmer_k']}) | {r.get('model_seconds', 0):.0f} | {ft_s} | "
              f"{r['kmer_seconds']:.0f} |")


if __name__ == "__main__":
    main()
