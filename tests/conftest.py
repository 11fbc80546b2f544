"""Test-wide settings, applied before any test module imports torch."""

import os

# See mamba_dna/__init__.py: keep torch's and numba's OpenMP pools from spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
