"""The benchmark scripts that cannot run in full here still run: the GPU check in its CPU smoke mode."""

import json
import os
import subprocess
import sys

from benchmarks.gpu_check import peak_tflops
from conftest import ROOT


def test_the_gpu_check_runs_on_cpu_and_reports_both_stages(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--peak-tflops", "1"],
                       cwd=tmp_path, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "bench-out" / "gpu_check.json").read_text())
    s = report["shapes"]["smoke"]
    one, two = s["stage_one"], s["stage_two"]
    assert one["unique_tokens"] == one["pairs"] * (one["prompt"] + 2 * one["response"])  # each prompt once
    assert one["scored_tokens"] == 2 * one["pairs"] * one["response"]
    assert one["ratio_vs_unique_forward"] > 0 and two["forward_tokens_per_s"] > 0 and two["steps_timed"] >= 1
    assert 0 < one["mfu"] and 0 < two["mfu"]  # a peak was given: MFU is computed
    assert "unique-token limit" in p.stdout and "stage two" in p.stdout


def test_a_cards_peak_is_its_own_not_a_shorter_names():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A10G") == 70.0 and peak_tflops("NVIDIA A10") == 125.0
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("Some Future Card") is None
