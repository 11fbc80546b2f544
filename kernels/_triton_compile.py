"""Compile every Triton kernel for NVIDIA GPUs without a GPU, and read its resource usage.

    python -m mamba_dna.kernels._triton_compile [--arch 80 90] [--all-configs] [--json]

For each kernel, config and architecture: triton.compile(ASTSource(...), GPUTarget("cuda",
arch, 32)) -> cubin -> Triton's bundled `cuobjdump --dump-resource-usage` -> registers,
local memory and stack frame (spills), static shared memory; plus Triton's own dynamic shared memory
figure, and whether every `tt.addptr` in the TTIR takes int64 offsets.

TRITON_INTERPRET=1 turns @triton.jit into an interpreted function that cannot be compiled,
so callers (tests/kernels/test_triton_compile.py) run this module in a subprocess with the
variable removed; this module refuses to run with it set.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Pointer arguments are 16-byte aligned in real launches (torch allocations): say so, as
# Triton's launcher would, so vectorisation matches what a GPU run compiles.
ALIGNED = {"tt.divisibility": 16}


@dataclass
class KernelUsage:
    kernel: str
    config: str
    arch: int
    registers: int
    local_bytes: int  # per thread; > 0 means register spills
    stack_bytes: int  # per-thread stack frame; spills land here too
    static_shared: int
    triton_shared: int  # dynamic shared memory Triton requests at launch
    addptr_total: int
    addptr_i32: int  # tt.addptr with 32-bit offsets (should be 0)


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"Triton's bundled cuobjdump is missing: {path}")
    return str(path)


def resource_usage(cubin: bytes) -> dict:
    """REG / LOCAL / SHARED of the (single) function in a cubin, via cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if "REG" not in fields:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    return {k: int(v) for k, v in fields.items()}


def addptr_offsets(ttir: str) -> tuple[int, int]:
    """(number of tt.addptr ops, how many of them take 32-bit offsets)."""
    types = re.findall(r"tt\.addptr .*?:\s*(.+)$", ttir, flags=re.M)
    n32 = sum(1 for t in types if re.search(r"\bi32\b|xi32>", t.split(",")[-1]))
    return len(types), n32


def _signature(fn, ptr_types: dict, constexprs: dict, int_type="i32"):
    """Every argument: a pointer type, a constexpr, or an integer (strides, sizes)."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
            attrs[(i,)] = [[k, v] for k, v in ALIGNED.items()]
        else:
            sig[name] = int_type
    return sig, attrs


def compile_one(fn, ptr_types, constexprs, num_warps, arch, name, config):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = _signature(fn, ptr_types, constexprs)
    src = ASTSource(fn, sig, constexprs, attrs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": num_warps, "num_stages": 2})
    ru = resource_usage(k.asm["cubin"])
    total, n32 = addptr_offsets(k.asm["ttir"])
    return KernelUsage(name, config, arch, ru["REG"], ru.get("LOCAL", 0), ru.get("STACK", 0),
                       ru.get("SHARED", 0),
                       int(getattr(k.metadata, "shared", 0)), total, n32)


def _scan_cases(all_configs: bool):
    from mamba_dna.kernels import triton_scan as ts

    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, HAS_H0=True,
                 HAS_SEQ=True, CHUNK=ts.DEFAULT_CHUNK, N_P=16)
    for io in ("fp32", "bf16"):
        ptr = {n: f"*{io}" for n in ("u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr",
                                      "dout_ptr", "du_ptr", "ddelta_ptr", "dz_ptr")}
        ptr.update({n: "*fp32" for n in ("A_ptr", "D_ptr", "bias_ptr", "h0_ptr", "states_ptr",
                                          "dlast_ptr", "dh0_ptr", "dA_part", "dB_part",
                                          "dC_part", "dD_part", "dbias_part")})
        ptr["seq_ptr"] = "*i32"
        # backward outputs are fp32 buffers (cast afterwards)
        ptr_b = dict(ptr, du_ptr="*fp32", ddelta_ptr="*fp32", dz_ptr="*fp32")
        if all_configs:
            named = {"dpg": 1 << 12}
            fwd = [(c.kwargs["BLOCK_D"], c.num_warps)
                   for c in ts.prune_fwd(ts.fwd_configs(), named, **flags)]
            bwd = [c.num_warps for c in ts.bwd_configs()]
        else:
            fwd = [(ts.FWD_DEFAULT["BLOCK_D"], ts.FWD_DEFAULT["num_warps"])]
            bwd = [4]
        for bd, nw in fwd:
            yield (ts._scan_fwd_kernel, ptr, dict(flags, BLOCK_D=bd), nw, "selective_scan_fwd",
                   f"{io} BLOCK_D={bd} CHUNK={flags['CHUNK']} N_P=16 warps={nw}")
        bd = ts.bwd_block_d(flags["CHUNK"], 16, 1 << 12)
        for nw in bwd:
            for atomic in (False, True):
                yield (ts._scan_bwd_kernel, ptr_b,
                       dict(flags, HAS_DLAST=True, ATOMIC_BC=atomic, BLOCK_D=bd), nw,
                       "selective_scan_bwd", f"{io}{' atomic' if atomic else ''} BLOCK_D={bd}"
                       f" CHUNK={flags['CHUNK']} N_P=16 warps={nw}")


def _step_cases(all_configs: bool):
    from mamba_dna.kernels import triton_step as st

    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, N_P=16)
    ptr = {n: "*bf16" for n in ("x_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr")}
    ptr.update({n: "*fp32" for n in ("state_ptr", "A_ptr", "D_ptr", "bias_ptr")})
    cfgs = ([(c.kwargs["BLOCK_D"], c.num_warps) for c in st.step_configs()] if all_configs
            else [(st.STEP_DEFAULT["BLOCK_D"], st.STEP_DEFAULT["num_warps"])])
    for bd, nw in cfgs:
        yield (st._state_update_kernel, ptr, dict(flags, BLOCK_D=bd), nw,
               "selective_state_update", f"bf16 BLOCK_D={bd} N_P=16 warps={nw}")


def compile_all(archs=(80, 90), all_configs=False) -> list[KernelUsage]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    out = []
    for case in list(_scan_cases(all_configs)) + list(_step_cases(all_configs)):
        fn, ptr, constexprs, nw, name, config = case
        for arch in archs:
            out.append(compile_one(fn, ptr, constexprs, nw, arch, name, config))
    return out


def table(rows: list[KernelUsage]) -> str:
    head = (f"{'kernel':24} {'config':51} {'sm':>3} {'regs':>5} {'local':>6} {'stack':>6} "
            f"{'smem':>6} {'i32 addptr':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        smem = max(r.static_shared, r.triton_shared)
        lines.append(f"{r.kernel:24} {r.config:51} {r.arch:>3} {r.registers:>5} "
                     f"{r.local_bytes:>6} {r.stack_bytes:>6} {smem:>6} "
                     f"{r.addptr_i32:>4}/{r.addptr_total:<5}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--all-configs", action="store_true", help="every autotune candidate")
    ap.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = ap.parse_args(argv)
    rows = compile_all(tuple(args.arch), args.all_configs)
    if args.json:
        for r in rows:
            print(json.dumps(asdict(r)))
    else:
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
