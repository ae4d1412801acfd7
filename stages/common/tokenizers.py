"""Teacher, reference and student must share one vocabulary: stored teacher ids index the student.

Checked before any model is loaded; a mismatch stops the run naming the first differing id.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path


class VocabularyMismatch(ValueError):
    pass


def _id_to_token(tok) -> dict[int, str]:
    return {i: t for t, i in tok.get_vocab().items()}


def compare_tokenizers(named: dict) -> int:
    """Raise VocabularyMismatch unless all tokenizers map the same ids to the same tokens; return the size."""
    (first_name, first), *rest = named.items()
    a = _id_to_token(first)
    for name, tok in rest:
        b = _id_to_token(tok)
        if a == b:
            continue
        for i in sorted(set(a) | set(b)):
            if a.get(i) != b.get(i):
                raise VocabularyMismatch(
                    f"tokenizers differ: {first_name} has {len(a)} ids, {name} has {len(b)}; first differing id {i}: "
                    f"{first_name} {a.get(i, '<none>')!r} vs {name} {b.get(i, '<none>')!r}")
    return len(a)


def vocab_sha256(tok) -> str:
    """sha256 of the id -> token table: equal exactly when stored ids mean the same tokens."""
    table = _id_to_token(tok)
    return hashlib.sha256("\n".join(f"{i}\t{table[i]}" for i in sorted(table)).encode()).hexdigest()


# How a tokenizer was loaded, which transformers saves into tokenizer_config.json: HF_HUB_OFFLINE=1 turns
# local_files_only on. Saved at their defaults for hashing, so that keys name inputs, not the environment.
LOADER_DEFAULTS = {"local_files_only": False}


def tokenizer_fingerprint(tok) -> dict:
    """sha256 of the tokenizer's saved files (loader settings at their defaults), of its chat template
    (files, not the live object) and of its id -> token table."""
    loaded = tok.init_kwargs
    with tempfile.TemporaryDirectory() as d:
        tok.init_kwargs = {**loaded, **{k: v for k, v in LOADER_DEFAULTS.items() if k in loaded}}
        try:
            tok.save_pretrained(d)
        finally:
            tok.init_kwargs = loaded
        h = hashlib.sha256()
        for p in sorted(Path(d).iterdir()):
            h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    template = tok.chat_template or ""
    return {"files_sha256": h.hexdigest(), "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "vocab_sha256": vocab_sha256(tok), "vocab_size": len(tok)}
