"""Pinned CPU kernels: the same float results on x86-64 CPUs of other vector widths.

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
(the world trains on one thread), and MKL's conditional reproducibility on non-Intel CPUs, which
Intel documents for its own processors (not measurable here).
"""

from __future__ import annotations

import os

PINNED = {"ATEN_CPU_CAPABILITY": "avx2",  # ATen's vectorized kernels: the AVX2 build on any AVX2 CPU
          "MKL_CBWR": "AVX2"}  # MKL's conditional numerical reproducibility: its AVX2 code path


def pinned_env(base: dict | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the kernels pinned, for a process to start."""
    return dict(os.environ if base is None else base) | PINNED


def is_pinned(env: dict | None = None) -> bool:
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in PINNED.items())
