"""World v4's integrity checks (docs/PREREG-v4.md), reduced: without the grids, at the settings phase 0
chose, on a cold store, in a process of their own with the pinned kernels and one thread, as
`python -m benchmarks.quality --checks-only` runs them. They must pass, and give the values recorded for
this machine's CPU class (docs/results/integrity-v4-by-cpu.json): the pinned kernels give the same bits on
the CPUs of one class, not across vendors (MKL honours its AVX2 branch on Intel CPUs only)."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from adpa.stages.common.kernels import cpu_class

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # world v4's seed 0: teachers, reward model, both SFT students, two DPO students


def test_the_integrity_checks_pass_at_the_values_recorded_for_this_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), ADPA_STORE=str(tmp_path / "store"))
    p = subprocess.run([sys.executable, "-m", "benchmarks.quality", "--checks-only"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["passed"] and set(got) - {"passed"} == {"a:s32", "a:s8", "b", "c"}  # the registered claim
    records = json.loads((ROOT / "docs" / "results" / "integrity-v4-by-cpu.json").read_text())["classes"]
    intel = json.loads((ROOT / "docs" / "results" / "quality-v4.json").read_text())["integrity"]["checks"]
    assert records["intel-avx2"]["checks"] == intel  # the benchmark's own record, copied unchanged
    here = cpu_class()
    if here not in records:
        warnings.warn(f"no integrity values recorded for CPU class {here}: the checks pass, their bits are unverified; "
                      f"record them in docs/results/integrity-v4-by-cpu.json: {json.dumps(got)}")
        return
    wrong = {name: (got[name]["value"], c["value"]) for name, c in records[here]["checks"].items()
             if got[name]["value"] != pytest.approx(c["value"], abs=1e-12)}
    assert not wrong, f"CPU class {here}: (got, recorded) {wrong}"
