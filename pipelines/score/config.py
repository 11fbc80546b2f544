"""`ScoreConfig`: the options of one `score` run (validated on construction), and the names
of the scores and their output columns."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from mamba_dna.errors import ConfigError
from mamba_dna.rankshard import parse_shard

SCORES = ("mlm", "llr", "dll", "emb")  # output columns follow this order
DEFAULT_SCORES = ("llr", "dll")  # `--scores auto` for a causal model
MASKED_DEFAULT_SCORES = ("mlm",)  # `--scores auto` for a masked model
AUTO = "auto"
SCORE_COLUMNS = {"mlm": ("mlm_llr",), "llr": ("llr",), "dll": ("dll", "dll_norm"), "emb": ("emb_cos", "emb_l2")}
# columns where a larger value means "more damaging" (distances); the others: negative = damaging
DISTANCE_COLUMNS = ("emb_cos", "emb_l2")


@dataclass
class ScoreConfig:
    """Options of one `score` run (saved in the output's header)."""

    vcf: str
    fasta: str
    model: str  # model directory or hf:ID, a baseline .npz, "markov:K|auto" or "kmer2:K|auto"
    out: str
    scores: tuple[str, ...] = (AUTO,)  # auto: DEFAULT_SCORES (causal) / MASKED_DEFAULT_SCORES (masked)
    emb_layer: int | None = None  # EMB layer (MambaLM.hidden's `layer`): None = after the final norm
    window: int = 2000  # DLL window: window // 2 bases downstream on each strand
    strict: bool = False  # REF mismatch / unknown contig = error instead of a flagged skip
    chrom_alias: str | None = None
    region: str | None = None  # chrom:start-end, 1-based inclusive
    shard: str | None = None  # "i/n", 0-based i
    batch_size: int | None = None  # ALT re-runs per model call (None: auto, see scorer.call_tokens)
    chunk: int | None = None  # tokens per call in the reference pass (None: auto, see call_tokens)
    snapshot_every: int = 128  # `--block`: state snapshot spacing (re-run prefix <= this - 1 bases)
    context: int | None = None  # causal: upstream bases streamed before a contig's first variant
    # (None: all); masked: the window length (None: 512, PlantCaduceus's)
    device: str = "auto"
    info_prefix: str = "MDNA_"
    tsv_info: tuple[str, ...] = ()  # INFO keys copied into TSV columns (e.g. labels)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Normalise `scores` / `emb_layer` (CLI strings) and check every option."""
        self.scores = tuple(s.strip().lower() for s in self.scores if s.strip())
        bad = [s for s in self.scores if s not in SCORES]
        if self.scores == (AUTO,):
            bad = []
        if bad or not self.scores:
            raise ConfigError(f"--scores {','.join(self.scores)}: expected auto or a subset of {','.join(SCORES)}")
        self.emb_layer = parse_emb_layer(self.emb_layer)
        if self.window < 2:
            raise ConfigError(f"--window {self.window}: expected >= 2 bases")
        if self.context is not None and self.context < 1:
            raise ConfigError(f"--context {self.context}: expected a positive number of bases")
        if (self.batch_size is not None and self.batch_size < 1) or (self.chunk is not None and self.chunk < 1) \
                or self.snapshot_every < 1:
            raise ConfigError("--batch-size, --chunk and --block must be positive")
        out_kind(self.out)
        parse_shard(self.shard)
        parse_region(self.region)


def resolve_scores(cfg: ScoreConfig, masked: bool) -> ScoreConfig:
    """`cfg` with `scores` for this scorer: auto -> its default; a score it cannot give is refused."""
    scores = cfg.scores
    if scores == (AUTO,):
        scores = MASKED_DEFAULT_SCORES if masked else DEFAULT_SCORES
    if masked and "dll" in scores:
        raise ConfigError(f"--scores {','.join(cfg.scores)}: dll (haplotype log-likelihood read left to right) "
                          "needs a causal model; --model is a masked model",
                          hint="masked models score mlm (MLM_LLR, the default), llr (unmasked approximation) and emb")
    if not masked and "mlm" in scores:
        raise ConfigError(f"--scores {','.join(cfg.scores)}: mlm (masked-model LLR) needs a masked model "
                          "(Caduceus, kmer2:K); --model is a causal model",
                          hint="causal models score llr, dll and emb")
    if scores == cfg.scores:
        return cfg
    return replace(cfg, scores=scores)


def out_kind(out: str) -> str:
    """"tsv" or "vcf" from an output path ('-' = TSV on stdout)."""
    if out == "-" or out.endswith((".tsv", ".tsv.gz", ".txt")):
        return "tsv"
    if out.endswith((".vcf", ".vcf.gz", ".vcf.bgz")):
        return "vcf"
    raise ConfigError(f"--out {out!r}: expected a .vcf, .vcf.gz, .tsv or .tsv.gz path, or '-' (TSV on stdout)")


def parse_emb_layer(value: int | str | None) -> int | None:
    """`--emb-layer`: "final" (or None) -> None, an integer (string) -> int."""
    if not isinstance(value, str):
        return value
    v = value.strip().lower()
    if v in ("final", "none", ""):
        return None
    if re.fullmatch(r"-?\d+", v):
        return int(v)
    raise ConfigError(f"--emb-layer {value!r}: expected 'final' or a block index (0 = embeddings, -1 = last block)")


def parse_region(spec: str | None) -> tuple[str, int, int] | None:
    """'chrom:start-end' (1-based inclusive) or 'chrom' -> (chrom, start0, end0 half-open)."""
    if not spec:
        return None
    m = re.fullmatch(r"(.+?)(?::([\d,]+)-([\d,]+))?", spec.strip())
    if not m:
        raise ConfigError(f"--region {spec!r}: expected chrom:start-end (1-based, inclusive)")
    chrom = m.group(1)
    if m.group(2) is None:
        return chrom, 0, 1 << 62
    a, b = int(m.group(2).replace(",", "")), int(m.group(3).replace(",", ""))
    if a < 1 or b < a:
        raise ConfigError(f"--region {spec!r}: expected 1 <= start <= end")
    return chrom, a - 1, b
