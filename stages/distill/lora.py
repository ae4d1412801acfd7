"""LoRA students (PEFT): low-rank adapters on the init model's linear layers train, nothing else.

`attach` injects the adapters into the transformers model in place and returns the PEFT wrapper;
the trainer keeps using the transformers model itself (its LoRA layers are inside it), so every
loss, the output layer and checkpoints see one kind of model. At the end `export` writes the
adapter (what `PeftModel.from_pretrained(init, folder)` loads) and returns the merged model:
W + (alpha / r) B A in every adapted layer, a plain transformers model that vLLM serves.
"""

from __future__ import annotations

from pathlib import Path

from adpa.stages.distill.settings import Lora


def attach(model, lora: Lora):
    """The PEFT model over `model` (changed in place); adapter init draws from torch's seeded RNG."""
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if lora.target_modules == ("all-linear",) else list(lora.target_modules)
    try:
        return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    except ValueError as e:  # e.g. target modules not found in the model
        raise ValueError(f"distill.lora.target_modules {list(lora.target_modules)}: {str(e).splitlines()[0]}") from None


def export(peft_model, adapter_dir: Path):
    """Write the adapter to `adapter_dir`; return the merged transformers model (the adapters folded in)."""
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    return peft_model.merge_and_unload()
