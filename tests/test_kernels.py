"""Pinned kernels (stages/common/kernels.py): a world model trained under two kernel settings of one machine
has the same bits, and so do the demo's stage one, student and evaluation (on the tiny world's untrained
models: the path, not the world). The "other machine" is this one with MKL limited to AVX2 and oneDNN to AVX2; without the
pins those settings change the weights on an AVX-512 machine (measured: see kernels.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

from adpa.stages.common.kernels import PINNED, is_pinned, pinned_env

pytestmark = pytest.mark.slow  # two processes, each building a world model
PROBE = str(Path(__file__).parent / "kernel_probe.py")
NARROWER = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


# world v4's model (the demo's world; v3's is not built pinned, docs/TINY_WORLD.md) and the demo's path
@pytest.mark.parametrize("model", ["builtin:tiny4-s32-sft", "pipeline"])
def test_a_world_model_and_the_demos_path_have_the_same_bits_under_two_kernel_settings_when_pinned(tmp_path, model):
    base = {k: v for k, v in pinned_env().items() if k not in NARROWER}
    envs = [base, base | NARROWER]
    assert all(is_pinned(e) for e in envs)
    procs = [subprocess.Popen([sys.executable, PROBE, str(tmp_path / f"store{i}"), model], env=e, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i, e in enumerate(envs)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    native, narrower = (o[0].strip() for o in outs)
    assert len(native) == 64 and native == narrower, (native, narrower)


def test_the_pins_are_environment_variables_of_the_processes_a_build_starts():
    env = pinned_env({"PATH": "/bin", "MKL_CBWR": "AUTO"})
    assert env == {"PATH": "/bin"} | PINNED and is_pinned(env) and not is_pinned({"PATH": "/bin"})
