"""Every Triton kernel compiles for A100 (sm_80) and H100 (sm_90) without a GPU, with no
register spills and int64 pointer offsets.

Compilation runs in a subprocess with TRITON_INTERPRET removed: with it set, @triton.jit
returns interpreted functions that cannot be compiled. The default run compiles each
kernel's default config (fp32 and bf16 I/O, every feature on, N=16); set
MAMBA_DNA_COMPILE_ALL=1 to compile every autotune candidate too (several minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
if not (CUOBJDUMP.exists() and PTXAS.exists()):
    pytest.skip("Triton's NVIDIA backend tools (ptxas, cuobjdump) are not installed",
                allow_module_level=True)

ALL = os.environ.get("MAMBA_DNA_COMPILE_ALL", "") not in ("", "0")


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = env.get("TRITON_DEFAULT_FP_FUSION", "1")
    return env


def _run(code_or_args: list[str]) -> str:
    proc = subprocess.run([sys.executable, *code_or_args], env=_env(), capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, f"compilation failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def usage():
    args = ["-m", "mamba_dna.kernels._triton_compile", "--arch", "80", "90", "--json"]
    out = _run(args + (["--all-configs"] if ALL else []))
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    from mamba_dna.kernels._triton_compile import KernelUsage, table

    print("\n" + table([KernelUsage(**r) for r in rows]))  # shown with pytest -s / on failure
    return rows


def test_every_kernel_compiles_for_sm80_and_sm90(usage):
    seen = {(r["kernel"], r["arch"]) for r in usage}
    for kernel in ("selective_scan_fwd", "selective_scan_bwd", "selective_state_update"):
        for arch in (80, 90):
            assert (kernel, arch) in seen, f"{kernel} was not compiled for sm_{arch}"


def test_no_register_spills(usage):
    spilled = [f"{r['kernel']} [{r['config']}] sm_{r['arch']}: {r['local_bytes']} B local, "
               f"{r['stack_bytes']} B stack, {r['registers']} regs"
               for r in usage if r["local_bytes"] > 0 or r["stack_bytes"] > 0]
    assert not spilled, "register spills to local memory:\n" + "\n".join(spilled)
    for r in usage:
        assert 0 < r["registers"] <= 255, r
        assert max(r["static_shared"], r["triton_shared"]) <= 96 * 1024, r  # fits sm_80's 163 KB


def test_pointer_offsets_are_int64(usage):
    for r in usage:
        assert r["addptr_total"] > 0, r
        assert r["addptr_i32"] == 0, (
            f"{r['kernel']} [{r['config']}]: {r['addptr_i32']} of {r['addptr_total']} "
            "tt.addptr ops take 32-bit offsets (overflow past 2^31 elements)"
        )


def test_int32_offset_detector_fires_on_an_int32_kernel(tmp_path):
    """The int64 check above can fail: a kernel with plain int32 offsets is flagged."""
    code = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mamba_dna.kernels._triton_compile import addptr_offsets

@triton.jit
def copy32(x_ptr, y_ptr, stride, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * stride + tl.arange(0, BLOCK)   # int32 arithmetic
    tl.store(y_ptr + offs, tl.load(x_ptr + offs))

sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "stride": "i32", "BLOCK": "constexpr"}
k = triton.compile(ASTSource(copy32, sig, {"BLOCK": 128}), target=GPUTarget("cuda", 90, 32))
print(*addptr_offsets(k.asm["ttir"]))
"""
    script = tmp_path / "int32_kernel.py"  # @triton.jit needs its source in a file
    script.write_text(code)
    total, n32 = map(int, _run([str(script)]).split()[-2:])
    assert total == 2 and n32 == 2
