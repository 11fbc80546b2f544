"""Species classification on the shared real genomes: the model beside the k-mer baseline.

    .venv/bin/python bench/classify.py                       # all tasks, random-init model
    .venv/bin/python bench/classify.py --model DIR           # a trained model
    .venv/bin/python bench/classify.py --tasks ebola,dengue  # a subset
    .venv/bin/python bench/classify.py --quick               # fewer windows, short lengths

Every task runs `classify train` (pipelines.classify.run_train): same leakage-free split,
same balanced windows, same classifier (standardise + logistic regression, C by CV) for the
model's pooled embeddings (mean, reverse-complement averaged) and for k-mer profiles (k in
3..6 picked on val). Prints one table: test accuracy per task and window length, with the
seconds each feature set took (features + fit; shared, noisy machine: single runs).
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
    ap.add_argument("--model", help="model directory [random-init 2 x 64]")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if not LABELS.exists():
        print(f"skip: {LABELS} not found (set MAMBA_DNA_DATA)")
        return
    from mamba_dna.pipelines.classify import ClassifyConfig, run_train

    from mamba_dna.model import MambaConfig, MambaLM

    out = Path(a.out or tempfile.mkdtemp(prefix="bench-classify-"))
    model = a.model
    if not model:
        torch.manual_seed(0)
        model = str(MambaLM(MambaConfig(d_model=64, n_layer=2)).save_pretrained(out / "model"))
    rows = []
    for name in a.tasks.split(","):
        kw, what = TASKS[name]
        kw = dict(kw)
        if a.quick:
            kw["per_class"] = 8
            kw["lengths"] = kw["lengths"][:2]
        cfg = ClassifyConfig(labels=str(LABELS), out=str(out / name), model=model,
                             rc_average=True, **kw)
        rep = run_train(cfg)
        for r in rep["length_table"]:
            rows.append((name, r))
        print(f"{name}: {what} -> {out / name}/report.md", file=sys.stderr)

    print(f"# classify: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}; "
          f"model {model} ({'random init' if not a.model else 'given'}); single runs")
    print("| task | window | train/test per class | model acc | k-mer acc (k) | model s | k-mer s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['window']} | {r['n_train_per_class']}/{r['n_test_per_class']} | "
              f"{r.get('model_accuracy', float('nan')):.3f} | {r['kmer_accuracy']:.3f} "
              f"({r['kmer_k']}) | {r.get('model_seconds', 0):.0f} | {r['kmer_seconds']:.0f} |")


if __name__ == "__main__":
    main()
