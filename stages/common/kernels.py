"""Pinned CPU kernels: the same float results on x86-64 CPUs of other vector widths (of one vendor).

A float32 sum depends on the order of its terms, and the order depends on the kernels: ATen picks
its vectorized kernels by the CPU's widest instruction set (AVX-512 here, AVX2 on many machines), and
MKL's GEMM does the same. Measured on one AVX-512 machine (the tiny world's SFT teacher, trained
on one thread, sha256 of its weights): the machine's own kernels 54bbdb42011e; ATen limited to
its default kernels and MKL to AVX2 9759bbd1aa6c; ATen pinned to AVX2 with MKL free 9ad3f9454bc5,
with MKL limited to AVX2 95709909f009. Pinning both, below, gives 95709909f009 whatever MKL may use
(`tests/test_kernels.py` builds it under two kernel settings and compares).

They are environment variables, read by torch and MKL when they start, so they go to the processes a
build starts (`pinned_env`), never into the one already running. What they do not fix: a CPU without
AVX2 (ATen falls back to its default kernels), the number of threads of a multi-threaded reduction
(the world trains on one thread), and MKL on non-Intel CPUs: Intel's reproducibility branches other than
COMPATIBLE hold on Intel processors only, and elsewhere MKL takes its automatic branch. Measured
2026-12-06 on an AMD EPYC (AVX-512), pinned: the version 3 SFT teacher is c519379b33b8, not the Xeon's
95709909f009, and world v4's integrity values differ (docs/RESULTS.md). So results are the same bits
within one `cpu_class`, not across vendors.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

PINNED = {"ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorized kernels: the AVX2 build on any AVX2 CPU
          "MKL_CBWR": "AVX2"}  # MKL's conditional numerical reproducibility: its AVX2 code path


def cpu_class(cpuinfo: str | None = None) -> str:
    """The CPUs on which the pinned kernels give the same bits as this one: ATen runs its AVX2 build on every
    AVX2 CPU, but MKL honours `MKL_CBWR=AVX2` on Intel CPUs only and runs its automatic branch elsewhere
    (Intel documents it; measured on an AMD EPYC: other weights than on a Xeon), whose code depends on the
    widest vector instructions. So: "intel-avx2" for every Intel CPU with AVX2, else "VENDOR-ISA"."""
    if cpuinfo is None:
        try:
            cpuinfo = open("/proc/cpuinfo").read(1 << 16)
        except OSError:
            return "unknown"
    fields = dict(ln.split(":", 1) for ln in cpuinfo.splitlines() if ":" in ln)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    vendor, flags = fields.get("vendor_id", "unknown"), set(fields.get("flags", "").split())
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse"
    if vendor == "GenuineIntel" and isa != "sse":
        return "intel-avx2"
    name = "amd" if vendor == "AuthenticAMD" else "".join(c for c in vendor.lower() if c.isalnum()) or "unknown"
    return f"{name}-{isa}"


def pinned_env(base: dict | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the kernels pinned, for a process to start."""
    return dict(os.environ if base is None else base) | PINNED


def is_pinned(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in PINNED.items())


def run_pinned(module: str) -> None:
    """Start this command again as `python -m module ARGS` with the kernels pinned, unless they are already
    (then it returns; else it never does): torch reads them once, when it starts."""
    if not is_pinned():
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], pinned_env())


@contextmanager
def one_thread():
    """Torch on one thread inside, whatever OMP_NUM_THREADS says: a float sum split over threads may round
    differently (seen on CI's CPU at 2 threads), and a world's models, or the demo's table, must be the
    same bits on every machine."""
    import torch  # here: this module is read before torch starts, to pin its kernels
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
