"""The machine a benchmark ran on, in one line: CPU model, the flags that decide matmul speed, cores,
torch version and threads, load average, and the measured matmul speed (fp32, and bf16 where the CPU has
bf16 hardware). Benchmarks import it by name (`from _machine import ...`): run as scripts, their own
directory is on sys.path.
"""

from __future__ import annotations

import os
import platform

# The CPU flags that decide which matmul kernels run: AVX2 (fp32 FMA), AVX-512, and bf16 hardware
# (AVX512-BF16 dot products, AMX tiles), which `train.precision auto` looks for.
MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    """The MATMUL_FLAGS this CPU has (empty off Linux)."""
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return [f for f in MATMUL_FLAGS if f in flags]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_info() -> str:
    """'AMD EPYC, 2 cores, flags: avx2 avx512f avx512_bf16'."""
    return f"{cpu_name()}, {os.cpu_count()} cores, flags: {' '.join(cpu_flags()) or 'none of avx2/avx512/amx'}"


def loadavg() -> str:
    """The 1-minute load average: above ~0 on an idle machine, other jobs share the cores."""
    return open("/proc/loadavg").read().split()[0] if platform.system() == "Linux" else "?"


def has_bf16() -> bool:
    """bf16 matmul hardware (AVX512-BF16 or AMX): the only CPUs where bf16 is measured and trained."""
    from gpt2kit.train import cpu_supports_bf16

    return cpu_supports_bf16()


def matmul_gflops() -> dict[str, float]:
    """Measured GFLOP/s of a 1024^3 matmul, best of 5 (gpt2kit.metrics.peak_flops, the MFU denominator of
    `gpt2kit train`): {'fp32': ...} plus 'bf16' where the CPU has bf16 hardware."""
    import torch

    from gpt2kit.metrics import peak_flops

    cpu = torch.device("cpu")
    out = {"fp32": peak_flops(cpu, torch.float32) / 1e9}
    if has_bf16():
        out["bf16"] = peak_flops(cpu, torch.bfloat16) / 1e9
    return out


def machine_line(gflops: dict[str, float] | None = None) -> str:
    """CPU, torch, threads, load and matmul speed, for the header of a results table."""
    import torch

    gflops = matmul_gflops() if gflops is None else gflops
    mm = ", ".join(f"{k} {v:,.0f}" for k, v in gflops.items())
    return (f"{cpu_info()}; torch {torch.__version__}, {torch.get_num_threads()} threads; Python "
            f"{platform.python_version()}; matmul 1024³ GFLOP/s: {mm}; load average {loadavg()}")
