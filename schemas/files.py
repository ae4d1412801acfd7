"""Opaque file artifacts (schema `adpa.files`): a model or tokenizer folder saved by transformers.

Each "shard" is one plain file of the folder (config.json, model.safetensors, tokenizer.json,
...). Verification is its size and sha256; the folder is loaded with `from_pretrained(path)`.
"""

NAME = "adpa.files"
VERSION = "1.0"


class Codec:
    name = NAME
    version = VERSION
    opaque = True

    @staticmethod
    def layout(params: dict) -> dict:
        return dict(params)
