"""The project as others install it (issue 27 item 11): a wheel (built, not editable) in a venv of its own,
run from outside the repository; and the README's Python API block, run exactly as written.

The wheel's venv borrows this venv's dependencies through a path file (torch and the rest are not
downloaded again; the editable install's finder there is not loaded: a .pth line adds a folder, it does
not run that folder's .pth files). `make wheel-check` does the whole of it: an empty venv, every
dependency from the index under the constraints, then `adpa demo`.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import linked_store

pytestmark = pytest.mark.slow  # builds a wheel and a venv; real SmolLM2 runs

ROOT = Path(__file__).resolve().parents[1]
U = lambda t: {"role": "user", "content": t}  # noqa: E731
A = lambda t: {"role": "assistant", "content": t}  # noqa: E731


def trl_pairs(path: Path, n: int) -> Path:
    """TRL's conversational shape with an explicit prompt: what a TRL user has."""
    rows = [{"prompt": [U(f"What is {i % 9 + 1} times {i * 7 % 11 + 2}?")],
             "chosen": [A(f"It is {(i % 9 + 1) * (i * 7 % 11 + 2)}.")],
             "rejected": [A(f"It is {(i % 9 + 1) * (i * 7 % 11 + 2) + 1}.")]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(cmd, cwd, env=None):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    d = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", d / "dist", ROOT], d)
    (wheel,) = (d / "dist").glob("adpa_pipeline-*.whl")
    venv = d / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], d)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "borrowed.pth").write_text(next(Path(p) for p in sys.path if p.endswith("site-packages")).as_posix() + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", "--no-index",
         wheel], d)
    return venv, wheel


def test_the_wheel_holds_one_namespace_and_its_data(wheel_venv):
    import zipfile
    _, wheel = wheel_venv
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("adpa_pipeline-")}
    assert tops == {"adpa"}  # nothing at the top level that another distribution could own
    assert "adpa/pipeline/recipes/smollm2.yaml" in names and "adpa/schemas/manifest.schema.json" in names
    assert not any(n.startswith("adpa/__init__") for n in names)  # a namespace: others may add adpa.* beside it


def test_the_installed_wheel_runs_both_stages_outside_the_repository(wheel_venv, model_store, tmp_path):
    venv, _ = wheel_venv
    py, adpa = venv / "bin" / "python", venv / "bin" / "adpa"
    where = run([py, "-c", "import sys, adpa.pipeline.cli, adpa.stages.distill.distiller, adpa.pipeline.orchestrate; "
                 "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.startswith('adpa.')))"],
                tmp_path).splitlines()
    assert len(where) > 20 and all(f.startswith(str(venv)) for f in where), where  # none from the source tree
    assert len(run([adpa, "recipe", "ls"], tmp_path).splitlines()) == len(list((ROOT / "pipeline" / "recipes").glob("*.yaml")))
    data = trl_pairs(tmp_path / "pairs.jsonl", 8)
    env = {"ADPA_STORE": str(linked_store(model_store, tmp_path / "store").root)}
    flags = ["-r", "smollm2", "--data", data, "--set", "data.holdout=0", "--set", "teacher_cache.states=chosen"]
    run([adpa, "--quiet", "teacher-cache", *flags], tmp_path, env)
    out = run([adpa, "--quiet", "distill", *flags, "--loss", "dckd"], tmp_path, env)
    folder = re.search(r"run: (\S+)", out).group(1)
    assert (tmp_path / folder / "model" / "model.safetensors").exists()


def test_the_readmes_python_block_runs_as_written(model_store, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) == 1
    (tmp_path / "api.py").write_text(blocks[0])
    trl_pairs(tmp_path / "my_pairs.jsonl", 64)
    linked_store(model_store, tmp_path / "store")  # the block's Store("store"), with the built-in models
    out = run([sys.executable, "api.py"], tmp_path, {"ADPA_QUIET": "1"})
    names = [m.group(1) for m in re.finditer(r"^(\S+) \{'", out, re.M)]
    assert names == ["teacher-sft", "teacher-dpo", "student-sft", "adpa"], out[-2000:]
