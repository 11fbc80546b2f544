"""The options of `classify train` (ClassifyConfig) and of its end-to-end fine-tuning
(FinetuneConfig, stored as config.json in a fine-tuned directory). Each validates itself on
construction."""

from __future__ import annotations

from dataclasses import dataclass

from mamba_dna.errors import ConfigError

SPLITS = ("train", "val", "test")


KMER_KS = (3, 4, 5, 6)  # default k search of the k-mer baseline (ClassifyConfig.kmer_ks=None)


CKPT_AUTO_FROM = 1 << 14  # gradient checkpointing "auto": on for windows at least this long


@dataclass
class FinetuneConfig:
    """The fine-tuning recipe (stored as config.json in the fine-tuned directory)."""

    steps: int = 200  # optimizer steps in all, split evenly over the length stages
    batch_size: int = 8
    lr: float = 6e-4
    weight_decay: float = 0.1
    lr_warmup: float = 0.1  # fraction of the steps with a linear lr ramp
    min_lr_ratio: float = 0.1  # cosine decay floor (multiplier of lr)
    clip: float = 1.0  # gradient-norm clipping (0: off)
    warmup_lengths: tuple[int, ...] | None = None  # explicit ladder (< target), e.g. 1024,2048
    warmup_start: int = 1024  # default ladder: doubling from here up to the target window
    pool: str | None = None  # "last" (the paper's head) | "mean"; None: last for a causal
    # backbone, mean for a bidirectional one (whose last position is no summary; "last" refused)
    grad_checkpointing: str = "auto"  # auto (windows >= 2^14) | on | off
    rc_augment: bool = True  # reverse-complement each training window with probability 1/2
    table: bool = True  # also fine-tune a fresh model for every other length-table row
    eval_batch: int = 16
    seed: int = 0

    @property
    def name(self) -> str:  # the "features" column of the classify report
        return "finetuned"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_batch < 1:
            raise ConfigError(f"--steps {self.steps} / --batch-size {self.batch_size}: expected >= 1")
        if not self.lr > 0 or self.weight_decay < 0 or self.clip < 0:
            raise ConfigError(f"--lr {self.lr}: expected > 0 (weight decay, clip >= 0)")
        if not 0 <= self.lr_warmup < 1 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"lr_warmup {self.lr_warmup} / min_lr_ratio {self.min_lr_ratio}: "
                              "expected fractions in [0, 1)")
        if self.pool not in (None, "last", "mean"):
            raise ConfigError(f"finetune pool {self.pool!r}: expected last or mean")
        if self.grad_checkpointing not in ("auto", "on", "off"):
            raise ConfigError(f"--grad-checkpointing {self.grad_checkpointing!r}: expected auto, "
                              "on or off")
        if self.warmup_start < 16:
            raise ConfigError(f"warmup_start {self.warmup_start}: expected >= 16 bp")
        if self.warmup_lengths is not None:
            w = list(self.warmup_lengths)
            if any(x < 16 for x in w) or w != sorted(set(w)):
                raise ConfigError(f"--warmup-lengths {','.join(map(str, w))}: expected "
                                  "increasing lengths >= 16 bp, e.g. 1024,2048,4096")


@dataclass
class ClassifyConfig:
    """Options of `classify train` (saved in OUT/report.json)."""

    labels: str
    out: str
    model: str | None = None  # None: the k-mer baseline only
    label_column: str = "species"
    group: str | None = None
    include: str | None = None
    label_from_record: str | None = None
    window: int = 4096
    split_by: str = "block"
    block: int = 0  # block size for block/file splits [default: window]
    per_class: int = 64  # train windows per class; val and test get half each
    bp_per_class: int = 1 << 21  # cap on bp per class and split in the length table
    lengths: tuple[int, ...] | None = None  # accuracy-vs-window-length table [2^10 ...]
    max_length: int = 1 << 20
    pool: str = "mean"
    layer: int | None = None
    rc_average: bool | None = None  # None: on for a bidirectional backbone (strand-symmetric
    # embeddings, as Caduceus recommends; free for PS), off for a causal one (a second pass)
    seed: int = 0
    device: str = "auto"
    kmer_ks: tuple[int, ...] | None = None  # k search of the k-mer baseline [KMER_KS: 3..6]
    finetune: FinetuneConfig | None = None  # also fine-tune the backbone end to end

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.window < 16 or self.window > 1 << 20:
            raise ConfigError(f"--window {self.window}: expected 16 .. 1048576 bp")
        if self.kmer_ks is not None and (not self.kmer_ks or any(
                not isinstance(k, int) or not 1 <= k <= 8 for k in self.kmer_ks)):
            raise ConfigError(f"--kmer-ks {self.kmer_ks}: expected one or more k in 1..8, "
                              "e.g. 3,4,5,6")
        if self.finetune is not None:
            if not self.model:
                raise ConfigError("--finetune needs --model (the pretrained backbone to tune)")
        if self.pool not in ("mean", "last", "max"):
            raise ConfigError(f"--pool {self.pool!r}: expected mean, last or max")
        if self.per_class < 4:
            raise ConfigError(f"--per-class {self.per_class}: expected >= 4")

