"""`mamba-dna demo`: the whole system on real genomes, on a laptop CPU, in minutes.

The recipe reads top to bottom; every figure is printed beside its baseline:

    data      find the shared data: --data, $MAMBA_DNA_DATA, ../shared/data beside the
              checkout or the working directory; otherwise say how to download it
    tokenize  virus genomes (one reference per species, no dengue) and three
              mitochondrial genomes -> shards; 10% of position blocks held out for
              validation, 10% for test (regions, not records)
    pretrain  a small Mamba LM for a fixed wall-clock budget (steps calibrated on this
              machine) or a fixed number of steps; validation bits per base beside the
              best k-mer Markov model on the same held-out windows
    score     zero-shot LLR (the streaming fast path) of 87,885 SARS-CoV-2 SNVs
              (Spearman vs fitness) and 437 human mtDNA SNVs (AUROC pathogenic vs
              common), beside Markov models fitted on the same corpus and on the reference
    embed     the 54 dengue genomes (unseen in pretraining) -> HDF5 (mean-pooled); record-level
              leave-one-out serotype accuracy and a PCA plot, beside k-mer profiles
    classify  dengue serotypes 1-4 from windows of held-out genomes (`classify train`):
              embeddings vs the k-mer baseline, confusion matrices, accuracy vs length
    report    OUT/report.md with the tables and plots; headline figures on stdout

Nothing is tuned to look good: a few CPU minutes of pretraining give a small model, and
the report says what each baseline got beside it. `quick=True` is the same story at a
toy scale (< 1 minute): it checks the plumbing, its figures mean little.

Output directory (re-running replaces it piece by piece; every file is written atomically):
    config.json    this DemoConfig (+ the resolved preset and the data folder)
    shards/        tokenize output          pretrain/   the pretrain run (model/ inside)
    score/         scored TSVs + plots      embed/      dengue.h5 + PCA plot
    classify/      classifiers, confusion matrices, accuracy vs length
    summary.json   every headline figure    report.md   the report

Files: config.py (DemoConfig, presets, data files), data.py (finding the data), stages.py (one
function per stage), plots.py, report.py (report.md, headline), run.py (run_demo).
"""

from mamba_dna.lazy import lazy_getattr

# name -> module; imported on first use, so the CLI reads DemoConfig without torch.
_PUBLIC = {
    "DENGUE": "config", "FULL": "config", "MT_REF": "config", "MT_VCF": "config", "QUICK": "config",
    "REQUIRED": "config", "SARS2_REF": "config", "SARS2_VCF": "config", "DemoConfig": "config",
    "Preset": "config",
    "corpus_files": "data", "data_candidates": "data", "find_data": "data",
    "format_headline": "report", "headline": "report", "write_report": "report",
    "run_demo": "run",
}
__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC, globals())
