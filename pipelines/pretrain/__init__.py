"""`mamba-dna pretrain`: next-nucleotide pretraining of a Mamba DNA language model.

The recipe (`Pretrainer`, trainer.py) reads top to bottom:

    setup     config -> run directory, process group (torchrun / SLURM / single), data
              (FASTA windows or a `tokenize` shard directory), model, AdamW, schedule,
              Markov baseline on the same validation split, resume from the last checkpoint
    train     sequence-length warmup stages (same tokens per step), reverse-complement
              augmentation, gradient accumulation, clipping, non-finite steps skipped,
              evaluation (loss, bits per base) beside the best k-mer Markov model
    save      atomic checkpoints (last K + best), metrics.jsonl, curves.png, model/

Files: config.py (PretrainConfig), data.py (windows, batches, strands), trainer.py (the
recipe), evaluate.py (validation loss), markov.py (the baseline), rundir.py (run directory,
checkpoints, metrics rows), report.py (curves.png), timing.py (calibrate: step timing).

Run directory:
    config.json          this PretrainConfig (what --resume reads back)
    metrics.jsonl        one JSON object per log/eval event
    curves.png           training and validation bits per base, Markov baseline
    checkpoints/         step_XXXXXXXX.pt (last K) and best.pt
    baseline.json        the Markov order chosen on validation and its bits per base
    model/               the final model (MambaLM.save_pretrained)
    summary.json         final figures (PretrainResult)
"""

from mamba_dna.lazy import lazy_getattr

# name -> module: the package imports torch only when one of these is first used, so the CLI
# can read PretrainConfig's defaults (config.py is light) without paying for torch.
_PUBLIC = {
    "PretrainConfig": "config", "config_from_cli": "config",
    "WindowData": "data", "load_data": "data", "make_batch": "data", "strand_flips": "data",
    "join_windows": "markov",
    "CKPT_FORMAT": "rundir", "checkpoint_paths": "rundir", "load_checkpoint": "rundir",
    "read_metrics": "rundir",
    "Pretrainer": "trainer", "PretrainResult": "trainer", "build_model": "trainer", "run": "trainer",
    "calibrate": "timing",
}
__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC)
