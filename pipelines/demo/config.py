"""The demo's options (DemoConfig), its two scales (FULL, QUICK) and the data files it reads."""

from __future__ import annotations

from dataclasses import dataclass

from mamba_dna.errors import ConfigError

# Files the demo reads, relative to the data folder (layout of ../shared/data).
SARS2_REF = "variants/sarscov2_ntfitness/MN908947_wuhan-hu-1.fasta"
SARS2_VCF = "variants/sarscov2_ntfitness/ntmut_fitness.vcf.gz"
MT_REF = "variants/human_mt_mitomap/rCRS_MT.fasta"
MT_VCF = "variants/human_mt_mitomap/mt_labeled_pathogenic_vs_common.vcf.gz"
DENGUE = "species/virus/dengue_all_sequences.fna.gz"
REQUIRED = (SARS2_REF, SARS2_VCF, MT_REF, MT_VCF, DENGUE)
# Pretraining corpus: one reference genome per virus species + three mitochondrial genomes.
# Near-copies are left out (the mpox clade IIb reference, the hMPV/mpox example genomes): a
# held-out region whose copy is in training measures memorisation, which a high-order Markov
# model does best. No dengue genome either (the reconstructed root is not a real isolate):
# the serotype tasks embed a virus the model has never seen.
CORPUS_GLOBS = ("species/virus/*reference*.fna.gz", "species/mito/*.fna.gz")
CORPUS_EXCLUDE = ("dengue", "mpox_clade-iib")
SEROTYPE_RE = r"_(DENV[1-4])$"
FITNESS_BAD, FITNESS_OK = -3.0, -0.5  # Bloom & Neher: clearly deleterious vs tolerated
OUTPUTS = ("report.md", "summary.json", "shards", "pretrain", "pretrain_mlm", "score", "embed", "classify")



@dataclass
class Preset:
    """The scale of a demo run (full or quick); saved in config.json."""

    d_model: int
    n_layer: int
    seq_len: int
    batch_size: int
    minutes: float | None  # default pretraining budget (None: use `steps`)
    steps: int | None  # default fixed steps (quick)
    min_steps: int
    lr: float
    eval_windows: int
    n_evals: int  # validation passes over the run (the curve's points)
    markov_orders: list[int]
    score_region_bp: int | None  # quick: score only the first bases of SARS-CoV-2
    embed_bp: int | None  # quick: embed only the first bases of each genome (BED)
    classify_window: int
    classify_lengths: list[int]
    per_class: int
    bp_per_class: int
    kmer_ks: list[int] | None = None  # k-mer baseline's k search (None: classify's 3..6)
    # the bidirectional stage: a Caduceus-PS masked LM on the same shards
    mlm_d_model: int = 64
    mlm_n_layer: int = 2
    mlm_share: float = 0.5  # its budget: this share of the causal model's minutes


FULL = Preset(d_model=128, n_layer=2, seq_len=1024, batch_size=8, minutes=4.0, steps=None,
              min_steps=10, lr=3e-3, eval_windows=32, n_evals=6,
              markov_orders=list(range(0, 11)), score_region_bp=None, embed_bp=None,
              classify_window=2048, classify_lengths=[512, 2048, 8192],
              per_class=16, bp_per_class=1 << 15)


QUICK = Preset(d_model=32, n_layer=1, seq_len=256, batch_size=4, minutes=None, steps=8,
               min_steps=2, lr=3e-3, eval_windows=4, n_evals=2,
               markov_orders=list(range(0, 7)), score_region_bp=2000, embed_bp=512,
               classify_window=256, classify_lengths=[256], per_class=8,
               bp_per_class=1 << 12, kmer_ks=[3, 4], mlm_d_model=16, mlm_n_layer=1)


@dataclass
class DemoConfig:
    """Options of `mamba-dna demo` (saved as OUT/config.json with the resolved preset)."""

    out: str = "runs/demo"
    data: str | None = None  # None: $MAMBA_DNA_DATA, then ../shared/data
    quick: bool = False
    minutes: float | None = None  # pretraining budget (training + validation passes)
    steps: int | None = None  # fixed pretraining steps instead of a budget
    device: str = "auto"
    seed: int = 0
    model: str | None = None  # DIR or hf:ID: score / embed / classify with it, no pretraining
    mlm: bool = True  # the bidirectional stage (a masked Caduceus-PS beside the causal model)
    preset: Preset | None = None  # None: FULL or QUICK from `quick`

    def __post_init__(self) -> None:
        self.validate()
        if self.preset is None:
            self.preset = QUICK if self.quick else FULL
        elif isinstance(self.preset, dict):  # read back from config.json
            self.preset = Preset(**self.preset)

    def validate(self) -> None:
        if self.minutes is not None and self.steps is not None:
            raise ConfigError("demo: give --minutes or --steps, not both")
        if self.minutes is not None and not self.minutes > 0:
            raise ConfigError(f"--minutes {self.minutes}: expected a positive number")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps {self.steps}: expected >= 1")
        if self.model is not None and (self.minutes is not None or self.steps is not None):
            raise ConfigError("demo: --model skips pretraining; --minutes and --steps do not apply")
