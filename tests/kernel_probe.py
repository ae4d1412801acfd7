"""Run by tests/test_kernels.py in processes started under other kernel settings; prints one sha256.

`kernel_probe.py STORE MODEL`: builds a world model (e.g. builtin:tiny4-s32-sft) in a fresh store and
prints the sha256 of its weights. `kernel_probe.py STORE pipeline`: the demo's path on 32 pairs of the
tiny world and its untrained models (stage one, an ADPA student, evaluation) and the sha256 of the
student's weights and of every number of its evaluation.
"""

import hashlib
import json
import sys
from pathlib import Path

import yaml

from adpa.artifacts import Store
from adpa.pipeline.builtin import resolve_model


def weights_sha256(folder: Path, h=None):
    h = h or hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        h.update(f.read_bytes())
    return h


def pipeline(store: Store) -> str:
    from adpa.pipeline.demo import run_demo
    from adpa.pipeline.recipe import load_recipe
    from adpa.pipeline.worlds import tiny
    teacher, student = (tiny.init_model(store, tiny.V3, role, 0) for role in ("teacher", "student"))
    data = str(tiny.dataset(store, tiny.V3, "train", 0))
    recipe = store.root / "probe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "probe", "models": {"teacher": str(teacher), "reference": str(student), "student": str(student)},
        "data": {"source": data, "format": "strings", "limit": 32, "reward": "sorting"},
        "teacher_cache": {"backend": "hf", "k": 4, "max_length": 32, "max_new_tokens": 12},
        "distill": {"lr": 1e-3, "sft_lr": 1e-3, "batch_pairs": 8, "epochs": 2}}))
    out = store.root / "demo"
    run = run_demo(store, load_recipe(str(recipe)), out, methods=("adpa",), say=lambda *a: None)
    h = weights_sha256(Path(run["students"]["adpa"]))
    report = json.loads((out / "eval.json").read_text())
    numbers = [{k: v for k, v in m.items() if k != "source"} for m in report["models"]]  # source: a folder
    h.update(json.dumps(numbers, sort_keys=True).encode())
    return h.hexdigest()


if __name__ == "__main__":
    st = Store(sys.argv[1])
    what = sys.argv[2] if len(sys.argv) > 2 else "builtin:tiny-teacher-sft"
    print(pipeline(st) if what == "pipeline" else weights_sha256(resolve_model(what, st).source).hexdigest())
