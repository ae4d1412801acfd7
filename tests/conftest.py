import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture
def store_root(tmp_path):
    return tmp_path / "store"


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from pipeline.worlds.smollm2 import smollm2_gguf
    from transformers import AutoTokenizer

    folder, name = smollm2_gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """A store holding the built-in models (real SmolLM2 weights and its cut-down copies), built once."""
    from artifacts import Store
    from pipeline.worlds.smollm2 import BUILTINS, build

    st = Store(tmp_path_factory.mktemp("models") / "store")
    for name in BUILTINS:
        build(name, st)
    return st


def write_recipe(path, data, **teacher_cache):
    """A user's edited copy of the tiny recipe."""
    import yaml

    from pipeline.recipe import RECIPES

    raw = yaml.safe_load((RECIPES / "smollm2.yaml").read_text())
    raw["data"]["source"] = str(data)
    raw["teacher_cache"]["backend"] = "hf"  # vLLM has its own tests; its engines take ~25 s to start
    raw["teacher_cache"].update(teacher_cache)
    path.write_text(yaml.safe_dump(raw))
    return path
