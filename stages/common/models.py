"""Where models come from: a hub id (`org/name[@revision]`) or a local folder.

Each spec resolves to something `from_pretrained` loads plus an identity for artifact keys: hub id
and revision, or the sha256 of a local folder's weight files. `builtin:NAME` specs (the built-in
worlds) are resolved by the pipeline before any stage runs; their identity names the store
artifact that holds them. Custom model code is never run (`trust_remote_code=False`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adpa.artifacts.fsutil import fingerprint_files

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class ResolvedModel:
    spec: str
    source: str  # what from_pretrained takes
    revision: str | None
    identity: dict


def quiet():
    """transformers' info logs and progress bars off for a block (our own bars say what happens)."""
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


def resolve(spec: str) -> ResolvedModel:
    """Turn a hub id or a folder into a loadable source and an identity."""
    if spec.startswith("builtin:"):
        raise ValueError(f"{spec}: built-in models are resolved by the pipeline (pipeline.builtin), not by a stage")
    p = Path(spec)
    if p.is_dir():
        refuse_custom_code(p)
        weights = [f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES]
        if not weights:
            raise FileNotFoundError(f"{spec}: a folder without weight files ({', '.join(WEIGHT_SUFFIXES)})")
        return ResolvedModel(spec, str(p), None, {"folder": p.name, "weights_sha256": fingerprint_files(weights)})
    hub_id, _, revision = spec.partition("@")
    check_hub_reachable(hub_id, revision or None)
    return ResolvedModel(spec, hub_id, revision or None, {"hub_id": hub_id, "revision": revision or "main"})


def check_hub_reachable(hub_id: str, revision: str | None) -> None:
    """A hub model not in the local cache needs the hub: one connection attempt (5 s) decides, so an offline
    run fails in one line naming the model instead of after minutes of retried downloads."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(hub_id, "config.json", revision=revision), str):
        return
    where = f"model {hub_id}{'@' + revision if revision else ''} is not in the local Hugging Face cache " \
            f"({constants.HF_HUB_CACHE})"
    fetch = f"download it where the hub is reachable (hf download {hub_id}) and copy the cache here, or give a folder"
    if constants.HF_HUB_OFFLINE:
        raise FileNotFoundError(f"{where} and HF_HUB_OFFLINE is set: {fetch}")
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise FileNotFoundError(f"{where} and the hub {constants.ENDPOINT} cannot be reached ({e}): {fetch}") from None


def refuse_custom_code(folder: Path) -> None:
    """A folder whose config asks for its own Python code (`auto_map`) is refused: code that comes with a
    model is never run, so such a model would load as something else or not at all."""
    import json
    for name in ("config.json", "tokenizer_config.json"):
        f = folder / name
        try:
            cfg = json.loads(f.read_text()) if f.is_file() else {}
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"{f}: not valid JSON") from None
        if isinstance(cfg, dict) and cfg.get("auto_map"):
            raise ValueError(f"{folder}: its {name} asks to run the model's own code (auto_map); adpa never runs "
                             f"code that comes with a model: use a standard transformers architecture")


def load_tokenizer(m: ResolvedModel):
    from transformers import AutoTokenizer

    with quiet():
        try:
            return AutoTokenizer.from_pretrained(m.source, revision=m.revision, trust_remote_code=False)
        except OSError as e:
            raise FileNotFoundError(f"cannot load the tokenizer of {m.spec}: {str(e).splitlines()[0]}") from None


def load_model(m: ResolvedModel, dtype, device, head: str = "causal"):
    """The model in eval mode on `device`: a causal LM, or (`head="reward"`) a sequence classifier."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if head == "reward" else AutoModelForCausalLM
    with quiet():
        model = cls.from_pretrained(m.source, revision=m.revision, dtype=dtype, trust_remote_code=False)
    return model.to(device).eval()
