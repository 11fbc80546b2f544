"""PretrainConfig: every option of a pretraining run (saved as RUN/config.json and read back
by --resume), and the CLI's layering of defaults, --config JSON, --model-config and flags.

Architectures (`arch`) and their objective:
    mamba        causal Mamba (MambaLM), next-nucleotide prediction (clm)
    bimamba      bidirectional Mamba (CaduceusLM, rcps false), masked LM (mlm)
    caduceus-ph  the same network as bimamba, always trained with reverse-complement
                 augmentation; strand symmetry at inference by post-hoc conjoining
                 (rc_average: the mean with the reverse-complement pass)
    caduceus-ps  reverse-complement-equivariant BiMamba (CaduceusLM, rcps true), mlm
A causal model cannot be trained as a masked LM (it never sees the right side) and a
bidirectional one cannot predict the next base (it sees it): both are refused."""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from mamba_dna.errors import ConfigError
from mamba_dna.fsutil import read_json_object

ARCHS = ("mamba", "bimamba", "caduceus-ph", "caduceus-ps")


@dataclass
class PretrainConfig:
    """Everything a run needs; saved as run_dir/config.json and read back by --resume."""

    inputs: list[str] = field(default_factory=list)  # FASTA files, or one shard directory
    inputs_fingerprint: list[dict] = field(default_factory=list)  # set by the run (rundir.fingerprints)
    out: str = "runs/pretrain"
    model: dict = field(default_factory=lambda: {"d_model": 128, "n_layer": 2})  # MambaConfig fields
    arch: str = "mamba"  # mamba | bimamba | caduceus-ph | caduceus-ps (see the module docstring)
    objective: str | None = None  # clm | mlm; None = the arch's own (clm for mamba, else mlm)
    # data
    seq_len: int = 1024  # target window length (bp)
    stride: int | None = None  # window stride on FASTA input (None = seq_len)
    split_by: str = "block"  # FASTA held-out split: "block" (regions) or "record"
    block_size: int | None = None  # split_by="block": bases per block (None = 8 * seq_len)
    val_fraction: float = 0.1
    test_fraction: float = 0.1  # held out for downstream evaluation, never read here
    max_n_fraction: float = 0.1
    rc_augment: bool = True  # random strand per window
    softmask_weight: float = 1.0  # loss weight of lowercase (soft-masked) targets (PlantCaduceus: 0.1)
    # masked LM (objective mlm): Caduceus's masking, see mamba_dna.mlm.mask_tokens
    mask_prob: float = 0.15  # share of A/C/G/T positions chosen as targets
    mask_token_frac: float = 0.8  # of the chosen: replaced by MASK
    random_token_frac: float = 0.1  # of the chosen: replaced by a random base (the rest stay)
    # sequence-length warmup: start at seq_len_start, double per stage up to seq_len
    seq_len_start: int | None = None  # None = no warmup
    seq_warmup_steps: int = 0  # steps spent below seq_len, split evenly over the stages
    # optimisation
    steps: int = 1000
    batch_size: int = 16  # global: windows of seq_len per optimizer step, over all ranks
    grad_accum: int = 1  # micro-batches per step on each rank
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    grad_checkpointing: bool = False
    max_bad_steps: int = 10  # non-finite losses in a row before giving up
    # evaluation and baseline
    eval_every: int = 100
    eval_windows: int = 64
    eval_batch_size: int = 8
    markov_orders: list[int] = field(default_factory=lambda: list(range(0, 11)))
    markov_max_bases: int = 20_000_000  # training bases the baseline is fitted on (both kinds)
    kmer2_ks: list[int] | None = None  # mlm: two-sided k-mer k tried (None = kmer2_auto_ks(bases))
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 100
    keep_last: int = 2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str, hint: str | None = None):
            if not ok:
                raise ConfigError(f"pretrain: {msg}", hint=hint)

        need(bool(self.inputs), "no input given", "pass FASTA files or a `mamba-dna tokenize` directory")
        need(self.seq_len >= 8, f"--seq-len {self.seq_len}: expected >= 8")
        need(self.steps >= 1, f"--steps {self.steps}: expected >= 1")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch size and grad accumulation must be >= 1")
        need(self.split_by in ("block", "record"), f"--split-by {self.split_by!r}: expected block or record")
        need(0 < self.val_fraction < 1 and 0 <= self.test_fraction < 1 - self.val_fraction,
             f"val/test fractions {self.val_fraction}/{self.test_fraction}: expected 0 < val, val + test < 1")
        need(self.precision in ("auto", "fp32", "bf16"), f"--precision {self.precision!r}: expected auto, fp32 or bf16")
        need(self.softmask_weight >= 0, f"--softmask-weight {self.softmask_weight}: expected >= 0")
        need(self.arch in ARCHS, f"--arch {self.arch!r}: expected one of {', '.join(ARCHS)}")
        need(self.objective in (None, "clm", "mlm"), f"--objective {self.objective!r}: expected clm or mlm")
        need(not (self.arch == "mamba" and self.objective == "mlm"),
             "--objective mlm needs a bidirectional --arch (bimamba, caduceus-ph, caduceus-ps): a causal "
             "mamba never sees the right side of a masked base", "drop --objective or pick such an --arch")
        need(not (self.arch != "mamba" and self.objective == "clm"),
             f"--objective clm with --arch {self.arch}: a bidirectional model sees the base it would "
             "predict, so next-base training is meaningless", "drop --objective (mlm) or use --arch mamba")
        need(not (self.arch == "caduceus-ph" and not self.rc_augment),
             "--arch caduceus-ph is BiMamba trained with reverse-complement augmentation; --no-rc "
             "contradicts it", "use --arch bimamba for no augmentation")
        need(0 < self.mask_prob <= 1 and 0 <= self.mask_token_frac and 0 <= self.random_token_frac
             and self.mask_token_frac + self.random_token_frac <= 1,
             f"masking {self.mask_prob}/{self.mask_token_frac}/{self.random_token_frac}: expected "
             "0 < mask_prob <= 1 and mask_token_frac + random_token_frac <= 1")
        need(self.kmer2_ks is None or (bool(self.kmer2_ks) and all(0 <= int(k) <= 8 for k in self.kmer2_ks)),
             f"kmer2_ks {self.kmer2_ks}: expected a non-empty list of k in 0..8")
        need(self.lr > 0 and 0 <= self.min_lr_ratio <= 1, "lr must be > 0 and min_lr_ratio in [0, 1]")
        need(self.warmup_steps >= 0 and self.seq_warmup_steps >= 0,
             f"--warmup-steps {self.warmup_steps} / --seq-warmup-steps {self.seq_warmup_steps}: expected >= 0")
        need(self.max_bad_steps >= 1 and self.keep_last >= 1, "max_bad_steps and keep_last must be >= 1")
        for name in ("eval_every", "log_every", "checkpoint_every"):
            need(getattr(self, name) >= 1, f"{name}={getattr(self, name)}: expected >= 1")
        lengths = self.stage_lengths()
        need(self.seq_warmup_steps == 0 or len(lengths) > 1,
             "seq_warmup_steps > 0 needs --seq-len-start below --seq-len")
        need(self.seq_warmup_steps < self.steps or len(lengths) == 1,
             f"seq_warmup_steps {self.seq_warmup_steps} must be below --steps {self.steps}")

    @property
    def bidirectional(self) -> bool:
        return self.arch != "mamba"

    @property
    def resolved_objective(self) -> str:
        """objective, or the arch's own when None."""
        return self.objective or ("mlm" if self.bidirectional else "clm")

    # -- schedules

    def stage_lengths(self) -> list[int]:
        """[start, 2*start, ..., seq_len]; [seq_len] without warmup."""
        if self.seq_len_start is None or self.seq_len_start >= self.seq_len:
            return [self.seq_len]
        s = self.seq_len_start
        ratio = self.seq_len // s
        if s < 8 or self.seq_len % s or ratio & (ratio - 1):
            raise ConfigError(
                f"pretrain: --seq-len-start {s} must be >= 8 and divide --seq-len {self.seq_len} "
                "by a power of two",
                hint="e.g. --seq-len-start 1024 --seq-len 131072",
            )
        from mamba_dna.training import length_ladder

        return length_ladder(s, self.seq_len)

    def seq_len_at(self, step: int) -> int:
        """Training length at optimizer step `step` (0-based)."""
        lengths = self.stage_lengths()
        if len(lengths) == 1 or self.seq_warmup_steps <= 0 or step >= self.seq_warmup_steps:
            return self.seq_len
        per_stage = max(1, self.seq_warmup_steps // (len(lengths) - 1))
        return lengths[min(step // per_stage, len(lengths) - 2)]

    def lr_factor(self, step: int) -> float:
        """Linear warmup then cosine decay to min_lr_ratio (multiplier of lr)."""
        from mamba_dna.training import warmup_cosine

        return warmup_cosine(step, self.steps, self.warmup_steps, self.min_lr_ratio)

    # -- I/O

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def defaults(cls) -> dict:
        """Every field's default, without building (and validating) a config."""
        return {f.name: f.default_factory() if f.default is MISSING else f.default for f in fields(cls)}

    @classmethod
    def check_fields(cls, d: dict, where: str) -> dict:
        extra = sorted(set(d) - {f.name for f in fields(cls)})
        if extra:
            raise ConfigError(f"{where}: unknown PretrainConfig field(s) {', '.join(extra)}")
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> PretrainConfig:
        return cls(**cls.check_fields(d, where))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PretrainConfig:
        d = read_json_object(path, "a pretrain run directory holds config.json")
        return cls.from_dict(d, where=str(path))


def config_from_cli(
    inputs: list[str], out: str, config: str | None, model_config: str | None,
    model_overrides: dict, overrides: dict,
) -> PretrainConfig:
    """Defaults < --config JSON < --model-config < flags that were given (not None).

    Without inputs, an existing run in `out` lends its own (what --resume continues)."""
    base = PretrainConfig.defaults()
    if config:
        base.update(PretrainConfig.check_fields(
            read_json_object(config, "--config takes a PretrainConfig JSON"), config))
    if model_config:
        p = Path(model_config)
        p = p / "config.json" if p.is_dir() else p
        from mamba_dna.model import MambaConfig

        base["model"] = {k: v for k, v in MambaConfig.from_json_file(p).to_dict().items()
                         if k != "gradient_checkpointing"}
    base["model"].update({k: v for k, v in model_overrides.items() if v is not None})
    base.update({k: v for k, v in overrides.items() if v is not None})
    if inputs:
        base["inputs"] = [str(x) for x in inputs]
    elif not base["inputs"] and (Path(out) / "config.json").is_file():
        base["inputs"] = read_json_object(Path(out) / "config.json", "").get("inputs") or []
    if (Path(out) / "config.json").is_file():
        # an existing run lends its architecture and objective when they are not given, so a
        # plain --resume of a caduceus run validates (a given one is reported as changed)
        saved = read_json_object(Path(out) / "config.json", "")
        if overrides.get("arch") is None and "arch" in saved:
            base["arch"] = saved["arch"]
            if overrides.get("objective") is None and "objective" in saved:
                base["objective"] = saved["objective"]
    base["out"] = str(out)
    return PretrainConfig.from_dict(base, where=config or "options")
