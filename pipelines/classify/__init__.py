"""`mamba-dna classify`: species (or any label) from genome windows, always beside a k-mer bar.

Setup: read a labels table (TSV: a `file` column + label columns; filter by `group`, pick
the label column, or take labels from record names with a regex), open every FASTA and cut
it into *segments*, each assigned to exactly one of train / val / test:

    split_by="record"  whole records go to one split (needs >= 3 records per class)
    split_by="block"   records are cut into blocks (>= the window) dealt to the splits
    split_by="file"    whole files go to test (the hard setting, e.g. unseen strains); the
                       other files give train and val blocks

Windows are drawn only inside one segment, so no window crosses a split boundary (no
leakage), and every class gets the same number of windows in each split (balanced).

Run: features are pooled embeddings from the backbone (`pipelines.embed.embed_sequences`,
the same code as `mamba-dna embed`) and, always, k-mer frequency profiles with k chosen in
`kmer_ks` (3..6) on the val split. One classifier for both: standardisation + multinomial logistic
regression with C cross-validated on train. Test: accuracy, balanced accuracy, per-class
precision/recall, confusion matrices (text + PNG), and accuracy vs window length.
With `finetune` set, the backbone is also fine-tuned end to end with a classification head
(`classify.finetune`: last-token head for causal backbones, mean-pooled for bidirectional
ones, sequence-length warmup) on windows of the train segments, and scored on the same test
windows: a third, "finetuned", result and column.

Bidirectional backbones (CaduceusLM, `mamba_dna.load.load_model`: our own, Caduceus or
PlantCaduceus directories, hf:ORG/NAME): `rc_average` defaults on for them (strand-symmetric
features; free for PS, whose two RC halves are averaged), pooling "last" is refused
(`run.resolve_for_model` fixes these model-dependent defaults once the model is loaded).

Save: a classifier is plain numbers (`classifier.npz`: coef, intercept, classes, scaler
mean/scale) + `classifier.json` (feature spec, model reference and checkpoint sha256, label
set, the npz's sha256). No pickle: loading rebuilds the linear model in numpy and refuses a
npz whose hash does not match its manifest. A fine-tuned classifier is a directory of
safetensors + JSON (see classify.finetune); `load_classifier` opens either kind.

Files, each importing only the ones above it: config.py (ClassifyConfig, FinetuneConfig),
data.py (labels, segments, windows), report.py (metrics, confusion, report.md), probe.py
(features, LinearClassifier), finetune.py (the fine-tuned network), run.py (`classify
train`), predict.py (`classify predict` / `evaluate`).
"""

from mamba_dna.lazy import lazy_getattr

# name -> module; imported on first use, so the CLI reads the configs without torch.
_PUBLIC = {
    "ClassifyConfig": "config", "FinetuneConfig": "config", "KMER_KS": "config", "SPLITS": "config",
    "GenomeCache": "data", "Segment": "data", "Source": "data", "Windows": "data",
    "draw_windows": "data", "make_segments": "data", "read_labels": "data",
    "sample_windows": "data", "window_tokens": "data",
    "confusion_text": "report", "format_report": "report", "metrics": "report",
    "FeatureSpec": "probe", "LinearClassifier": "probe", "features": "probe", "fit_eval": "probe",
    "FinetunedClassifier": "finetune", "SequenceClassifier": "finetune",
    "fit_eval_finetuned": "finetune",
    "run_train": "run",
    "evaluate": "predict", "load_classifier": "predict", "predict_files": "predict",
    "write_predictions": "predict",
}
__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC, globals())
