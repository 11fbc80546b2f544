"""mamba-dna: Mamba (selective state space) DNA language models.

Single-nucleotide tokens, sequences up to a megabase, one selective-scan API with three
execution paths (reference, fast CPU, fused Triton), and pipelines for pretraining,
variant-effect scoring, embedding export and species classification.
"""

__version__ = "0.1.0"

from mamba_dna.errors import MambaDNAError  # noqa: E402

__all__ = ["MambaDNAError", "__version__"]
