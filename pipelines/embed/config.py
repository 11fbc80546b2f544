"""`EmbedConfig`: the options of one `embed` run (validated on construction)."""

from __future__ import annotations

from dataclasses import dataclass

from mamba_dna.errors import ConfigError
from mamba_dna.io import hdf5
from mamba_dna.rankshard import parse_shard

POOLS = ("mean", "max", "last", "none")
DTYPES = ("float32", "float16")


@dataclass
class EmbedConfig:
    fasta: str
    model: str
    out: str
    bed: str | None = None
    window: int = 0  # 0 = whole records (or BED regions)
    stride: int | None = None  # default: window (no overlap)
    pool: str = "mean"
    per_position: bool = False
    layer: int | None = None  # None = after the final norm
    rc_average: bool = False
    dtype: str = "float32"
    compression: str = hdf5.DEFAULT_COMPRESSION  # per-position filter: lzf | gzip | none
    piece: int = 1 << 15  # positions per streamed piece
    batch_tokens: int = 1 << 16
    max_batch: int = 64
    shard: str | None = None  # "i/n", 0 <= i < n
    resume: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.pool not in POOLS:
            raise ConfigError(f"--pool {self.pool!r}: expected one of {', '.join(POOLS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: expected float32 or float16")
        if self.pool == "none" and not self.per_position:
            raise ConfigError("--pool none without --per-position would write nothing",
                              hint="add --per-position or choose --pool mean|max|last")
        if self.bed and self.window:
            raise ConfigError("--bed and --window are exclusive (regions or windows)")
        if self.window < 0 or (self.stride is not None and self.stride <= 0):
            raise ConfigError(f"--window {self.window} / --stride {self.stride}: expected "
                              "positive lengths in bp")
        if self.piece < 1:
            raise ConfigError(f"piece {self.piece} must be >= 1")
        hdf5.check_compression(self.compression)
        parse_shard(self.shard)
