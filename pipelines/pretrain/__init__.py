"""`mamba-dna pretrain`: pretraining of a Mamba DNA language model: next-nucleotide (clm,
causal Mamba) or masked (mlm, Caduceus-style: BiMamba, Caduceus-Ph, Caduceus-PS).

The recipe (`Pretrainer`, trainer.py) reads top to bottom:

    setup     config -> run directory, process group (torchrun / SLURM / single), data
              (FASTA windows or a `tokenize` shard directory), model, AdamW, schedule,
              baseline on the same validation split, resume from the last checkpoint
    train     sequence-length warmup stages (same tokens per step), reverse-complement
              augmentation, gradient accumulation, clipping, non-finite steps skipped,
              evaluation beside its baseline: clm bits per base vs the best k-mer Markov
              model; mlm masked bits per base (15% of bases chosen, 80/10/10, masks a
              function of (seed, step, slot) so resume is exact) vs the two-sided k-mer
              model at the same masked positions
    save      atomic checkpoints (last K + best), metrics.jsonl, curves.png, model/

Files: config.py (PretrainConfig), data.py (windows, batches, strands), trainer.py (the
recipe), evaluate.py (validation loss), markov.py (the baseline), rundir.py (run directory,
checkpoints, metrics rows), report.py (curves.png), timing.py (calibrate: step timing).

Run directory:
    config.json          this PretrainConfig (what --resume reads back)
    metrics.jsonl        one JSON object per log/eval event
    curves.png           training and validation bits per base, the baseline
    checkpoints/         step_XXXXXXXX.pt (last K) and best.pt
    baseline.json        clm: the Markov order chosen on validation and its bits per base;
                         mlm: the two-sided k-mer k chosen and its masked bits per base
    model/               the final model (MambaLM or CaduceusLM save_pretrained)
    summary.json         final figures (PretrainResult)
"""

from mamba_dna.lazy import lazy_getattr

# name -> module: the package imports torch only when one of these is first used, so the CLI
# can read PretrainConfig's defaults (config.py is light) without paying for torch.
_PUBLIC = {
    "PretrainConfig": "config", "config_from_cli": "config",
    "WindowData": "data", "load_data": "data", "make_batch": "data", "strand_flips": "data",
    "make_mlm_batch": "data", "mask_generator": "data", "ARCHS": "config",
    "join_windows": "markov", "kmer2_baseline": "markov", "evaluate_masked": "evaluate",
    "CKPT_FORMAT": "rundir", "checkpoint_paths": "rundir", "load_checkpoint": "rundir",
    "read_metrics": "rundir",
    "Pretrainer": "trainer", "PretrainResult": "trainer", "build_model": "trainer", "run": "trainer",
    "calibrate": "timing",
}
__all__ = sorted(_PUBLIC)

__getattr__ = lazy_getattr(__name__, _PUBLIC, globals())
