"""Selective-scan operators: the one dispatch point.

    selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                      delta_softplus=False, return_last_state=False,
                      initial_state=None, seq_idx=None)
    selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None,
                           dt_softplus=False)
    causal_conv1d_fn(x, weight, bias=None, initial_state=None, activation="silu")
    rms_norm_fn(x, weight, eps=1e-5)

mamba_ssm's signatures and layouts (u, delta, z: (batch, dim, L); A: (dim, N);
B, C: (batch, N, L) or (batch, groups, N, L)), plus `initial_state` (batch, dim, N) and
`seq_idx` (batch, L) for streaming and packed records.

Backends: "triton" for CUDA tensors when Triton is importable, "cpu" otherwise;
`MAMBA_DNA_BACKEND=ref|cpu|triton` forces one. The reference (`selective_scan_ref`,
`selective_state_update_ref`) is the ground truth every fast path is tested against.
"""

from __future__ import annotations

import importlib.util
import os

BACKENDS = ("ref", "cpu", "triton")


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def choose_backend(device_type: str = "cpu") -> tuple[str, str]:
    """Return (backend, reason) for tensors on `device_type`."""
    forced = os.environ.get("MAMBA_DNA_BACKEND", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            from mamba_dna.errors import ConfigError

            raise ConfigError(
                f"MAMBA_DNA_BACKEND={forced!r} is not a backend",
                hint=f"use one of {', '.join(BACKENDS)}",
            )
        return forced, f"forced by MAMBA_DNA_BACKEND={forced}"
    if device_type == "cuda":
        if triton_available():
            return "triton", "CUDA tensors and Triton available: fused Triton kernels"
        return "cpu", "CUDA tensors but Triton is not installed: the chunked PyTorch path"
    return "cpu", f"{device_type} tensors: the fast CPU path"


from mamba_dna.kernels.reference import (  # noqa: E402
    selective_scan_ref,
    selective_state_update_ref,
)


def selective_scan_fn(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    initial_state=None,
    seq_idx=None,
):
    """Selective scan with mamba_ssm's contract; see the module docstring for shapes."""
    backend, _ = choose_backend(u.device.type)
    if backend == "triton":
        from mamba_dna.kernels.triton_scan import selective_scan_triton as fn
    elif backend == "cpu":
        from mamba_dna.kernels.cpu import selective_scan_cpu as fn
    else:
        fn = selective_scan_ref
    return fn(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
        initial_state=initial_state, seq_idx=seq_idx,
    )


def selective_state_update(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False
):
    """One recurrent step; updates `state` (batch, dim, N) in place and returns y (batch, dim)."""
    backend, _ = choose_backend(x.device.type)
    if backend == "triton":
        from mamba_dna.kernels.triton_step import selective_state_update_triton as fn
    else:
        fn = selective_state_update_ref
    return fn(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def causal_conv1d_fn(x, weight, bias=None, initial_state=None, activation="silu"):
    """Causal depthwise conv1d (+ SiLU): x (batch, dim, L), weight (dim, K), bias (dim,),
    initial_state (batch, dim, K-1) -> (batch, dim, L). The fused numba kernel for CPU
    tensors (kernels/conv.py), PyTorch's conv1d elsewhere or with MAMBA_DNA_BACKEND=ref."""
    from mamba_dna.kernels.conv import causal_conv1d_cpu, causal_conv1d_ref

    backend, _ = choose_backend(x.device.type)
    fn = causal_conv1d_cpu if backend == "cpu" else causal_conv1d_ref  # non-CPU tensors: ref
    return fn(x, weight, bias, initial_state, activation)


def rms_norm_fn(x, weight, eps=1e-5):
    """RMSNorm over the last dim: x (..., d), weight (d,) -> x's dtype, float32 math. The fused
    numba kernel for CPU tensors (kernels/norm.py), PyTorch ops elsewhere or with
    MAMBA_DNA_BACKEND=ref."""
    from mamba_dna.kernels.norm import rms_norm_cpu, rms_norm_ref

    backend, _ = choose_backend(x.device.type)
    fn = rms_norm_cpu if backend == "cpu" else rms_norm_ref  # non-CPU tensors: ref
    return fn(x, weight, eps)


__all__ = [
    "causal_conv1d_fn",
    "rms_norm_fn",
    "choose_backend",
    "selective_scan_fn",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "triton_available",
]
