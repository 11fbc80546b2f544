"""mamba-dna: Mamba (selective state space) DNA language models.

Single-nucleotide tokens, sequences up to a megabase, one selective-scan API with three
execution paths (reference, fast CPU, fused Triton), and pipelines for pretraining,
variant-effect scoring, embedding export and species classification.
"""

import os as _os

__version__ = "0.3.1"

# torch and the numba CPU scan each run an OpenMP thread pool; with the default (active)
# wait policy their idle threads spin and starve each other: a tiny training step measured
# 4.2 s with spinning vs 0.18 s with PASSIVE on a loaded 2-core machine. It only takes
# effect if set before the OpenMP runtime starts (importing mamba_dna before torch does
# it); a user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mamba_dna.errors import MambaDNAError  # noqa: E402

__all__ = ["MambaDNAError", "__version__"]
