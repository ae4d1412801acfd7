"""The benchmark scripts keep running between their full runs: the GPU check in its CPU smoke mode, the
stage-one benchmark in its smoke mode, the store benchmark on a few hundred positions."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks.gpu_check import peak_tflops
from conftest import ROOT

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`


def test_the_gpu_check_runs_on_cpu_and_reports_both_stages(tmp_path):
    p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--peak-tflops", "1", "--compile"],
                       cwd=tmp_path, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    report = json.loads((tmp_path / "bench-out" / "gpu_check.json").read_text())
    assert report["shapes"]["smoke"]["stage_two_compiled"]["forward_tokens"] > 0 and "compiled" in p.stdout
    s = report["shapes"]["smoke"]
    one, two = s["stage_one"], s["stage_two"]
    assert one["unique_tokens"] == one["pairs"] * (one["prompt"] + 2 * one["response"])  # each prompt once
    assert one["scored_tokens"] == 2 * one["pairs"] * one["response"]
    assert one["ratio_vs_unique_forward"] > 0 and two["forward_tokens_per_s"] > 0 and two["steps_timed"] >= 1
    assert 0 < one["mfu"] and 0 < two["mfu"]  # a peak was given: MFU is computed
    assert "unique-token limit" in p.stdout and "stage two" in p.stdout


def test_the_gpu_check_needs_only_what_a_bare_cuda_machine_has(tmp_path):
    """issue 28 item 7: a CUDA machine without registries has torch, transformers, pyarrow, numpy and numba
    (and what they require), not `make setup`'s other packages, and not this project installed: the check
    runs there from a copy of the tree, `python -m benchmarks.gpu_check`."""
    from helpers import bare_venv
    py = bare_venv(tmp_path / "venv")
    missing = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in ('zstandard', 'datasets', "
                              "'jsonschema', 'cryptography', 'matplotlib', 'peft', 'vllm', 'adpa') if u.find_spec(m)])"],
                             capture_output=True, text=True, cwd=tmp_path)
    assert missing.stdout.strip() == "[]", missing.stdout + missing.stderr  # the machine as it is lent
    p = subprocess.run([py, "-m", "benchmarks.gpu_check", "--device", "cpu", "--peak-tflops", "1"], cwd=tmp_path,
                       capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-2000:]
    assert "stage two" in p.stdout and (tmp_path / "bench-out" / "gpu_check.json").exists()


def test_a_cards_peak_is_its_own_not_a_shorter_names():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A10G") == 70.0 and peak_tflops("NVIDIA A10") == 125.0
    assert peak_tflops("NVIDIA H200") == 989.0 and peak_tflops("Some Future Card") is None


def test_the_stage_one_benchmark_runs_every_measurement(tmp_path):
    """`make bench-teacher-cache` in its smoke mode: every child (limit, end to end with and without
    sharing, advantage, decode, 4N, local and Ray engines; Ray with one worker) runs against today's APIs."""
    p = subprocess.run([sys.executable, "-m", "benchmarks.teacher_cache", "--smoke", "--pairs", "2"],
                       cwd=tmp_path, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((tmp_path / "bench-out" / "teacher_cache.json").read_text())
    for key in ("ratio_vs_unique_forward", "teacher_topk_bytes_per_token", "advantage_bytes_per_token",
                "decode_tokens_per_s"):
        assert report[key] > 0, key
    assert report["limits"]["unique_tokens"] < report["limits"]["per_sequence_tokens"]  # each prompt once
    assert all(report["engines"][e]["rows_per_s"] > 0 for e in ("local", "ray_1_worker"))  # smoke: one Ray start
    fields = report["bytes_per_token_by_field"]
    assert set(fields["advantage"]) > set(fields["teacher-topk"])  # the reference's fields besides the teacher's
    by_scale = report["advantage_bytes_per_token_by_reference_scale"]
    assert by_scale["0.0"] < by_scale["3.0"]  # a reference farther from the teacher costs more
    assert "unique-token limit" in p.stdout


def test_the_store_benchmark_runs_and_its_shards_hold_the_stated_fidelity(tmp_path):
    """`make bench-store` on 512 positions: real SmolLM2 output through the store and back, every k."""
    out = tmp_path / "store.json"
    p = subprocess.run([sys.executable, "-m", "benchmarks.store", "--tokens", "512", "--seq-len", "128", "--out",
                        str(out)], cwd=tmp_path, capture_output=True, text=True,
                       env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(out.read_text())
    for k in ("20", "50", "64"):
        ours = report[k]["ours"]
        assert ours["ids_exact"] and ours["max_err_all"] <= 0.0095 + 1e-6 and ours["max_tail_err"] <= 0.0095 + 1e-6
        assert ours["bytes_per_token"] < report[k]["reference"]["bytes_per_token"]
