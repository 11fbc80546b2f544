"""What the numba CPU kernels (cpu.py: the scan, conv.py, norm.py) share.

* `FASTMATH`: the flags every kernel compiles with. Reassociation, FMA contraction and
  approximate functions let LLVM vectorise the loops; `nnan`/`ninf` are left out so a NaN in
  the inputs still comes out as NaN. The kernels also use numba's "numpy" error model: a
  float division is not checked for zero (that check is a branch that keeps a loop scalar;
  no divisor in the kernels can be 0).
* `vexp(x, out, bits, m)`: a vectorisable float32 exp, the kernels' one transcendental
  (softplus, sigmoid, exp(dt*A)). Cody-Waite range reduction, a degree-6 polynomial, 2^k
  built from the exponent bits through an int32 view, so LLVM emits AVX2 code for it
  (numba's `np.exp` is a scalar libm call per element). At most 1 ulp over [-87, 88]
  (tests/kernels/test_scan_cpu.py); arguments below -87.33 are clamped there (exp = 1.18e-38,
  about the smallest normal float32, where the true value is denormal: as good as 0 next to
  any state term); NaN in gives NaN out.
* The LLVM option `--force-vector-interleave=1`, set on import (see below).
* `ensure_threads()` / `set_threads_from_affinity()`: numba's thread pool sized to the CPUs
  this process may run on (Slurm's cpus-per-task), not the machine's; `parts_for(channels)`:
  how many blocks of work the kernels split into, one per thread.

numba's on-disk cache (`cache=True`, in kernels/__pycache__) is keyed by the file of the
kernel that calls these helpers, not by this file: after editing this module, delete
kernels/__pycache__/*.nbi and *.nbc so the kernels are compiled again.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit

__all__ = [
    "FASTMATH",
    "ONE",
    "ZERO",
    "ensure_threads",
    "parts_for",
    "set_threads_from_affinity",
    "vexp",
]

FASTMATH = {"reassoc", "contract", "arcp", "nsz", "afn"}

_F32 = np.float32
ONE = _F32(1.0)
ZERO = _F32(0.0)
_HALF = _F32(0.5)

_LOG2E = _F32(1.4426950408889634)
_LN2_HI = _F32(0.693359375)  # few mantissa bits: k * _LN2_HI is exact for |k| < 2^15
_LN2_LO = _F32(-2.12194440e-4)
_EXP_LO = _F32(-87.33)  # clamp: exp below this would be a float32 denormal
_EXP_HI = _F32(88.7)
# exp(r) = 1 + r + r^2 q(r) on |r| <= ln2/2, q of degree 4: a minimax fit (Lawson-weighted
# least squares) of (e^r - 1 - r) / r^2 for relative error, 3e-9 in exact arithmetic; in
# float32 at most 0.99 ulp (mean 0.27) against float64 exp over [-87, 88].
_P1 = _F32(0.001381461275741458)  # r^4
_P2 = _F32(0.008368710055947304)  # r^3
_P3 = _F32(0.04166838899254799)  # r^2
_P4 = _F32(0.1666652113199234)  # r
_P5 = _F32(0.4999999403953552)  # 1

# LLVM's loop vectoriser interleaves 2-4 vector bodies by default, so a loop over N = 16
# floats (two AVX2 vectors) is shorter than one interleaved body and runs in its scalar
# remainder; one interleave makes those loops vector code. The option is process-wide and
# read only when numba compiles (the kernels are then cached on disk); it changes speed,
# never results. MAMBA_DNA_LLVM_INTERLEAVE=0 leaves LLVM's default alone (for kernels
# compiled from then on: numba's on-disk cache keeps what was compiled before).
if os.environ.get("MAMBA_DNA_LLVM_INTERLEAVE", "1") != "0":
    import llvmlite.binding as _llvm

    _llvm.set_option("mamba_dna", "--force-vector-interleave=1")


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _exp_parts(x):
    """exp(x) for float32 x as (mantissa factor p, exponent bits): exp(x) = p * f32(bits).

    Split so the caller can reinterpret the int32 bits through a view of a small buffer,
    which keeps the loop over N vectorisable (no scalar bit casts).
    """
    x = _EXP_LO if x < _EXP_LO else x  # NaN compares false and stays NaN
    x = _EXP_HI if x > _EXP_HI else x
    k = np.floor(x * _LOG2E + _HALF)  # float32, exact integer
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO  # |r| <= ln2 / 2
    p = _P1 * r + _P2
    p = p * r + _P3
    p = p * r + _P4
    p = p * r + _P5
    p = p * r * r + r + ONE
    bits = (np.int32(k) + np.int32(127)) << 23  # 2^k, k in [-126, 128]
    return p, bits


@njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def vexp(x, out, bits, m):
    """out[:m] = exp(x[:m]) (float32, vectorised); bits: int32 scratch of length >= m."""
    scale = bits.view(np.float32)
    for i in range(m):
        out[i], bits[i] = _exp_parts(x[i])
    for i in range(m):
        out[i] = out[i] * scale[i]


def set_threads_from_affinity() -> int:
    """Use as many numba threads as CPUs this process may run on (Slurm's cpus-per-task)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    n = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


_THREADS_SET = False


def ensure_threads() -> None:
    """`set_threads_from_affinity()` once per process, before the first kernel runs."""
    global _THREADS_SET
    if not _THREADS_SET:
        set_threads_from_affinity()
        _THREADS_SET = True


def parts_for(channels: int) -> int:
    """Blocks of work the kernels split into: one per numba thread, at most `channels`."""
    return max(1, min(numba.get_num_threads(), channels))
