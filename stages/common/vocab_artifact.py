"""A tokenizer's vocabulary table (`schemas/vocab.py`) in the store: stage one publishes the table of the
tokenizer that rendered its artifacts, stage two reads it to train a student of another tokenizer."""

from __future__ import annotations

from pathlib import Path

from adpa.artifacts import Store
from adpa.artifacts.folders import publish_folder
from adpa.artifacts.shards import ShardError, check_file
from adpa.artifacts.transfer import local_copy
from adpa.schemas import vocab as vocab_schema
from adpa.stages.common.token_bytes import vocab_table


def publish_vocab(store: Store, tok, fingerprint: dict) -> tuple[str, bool]:
    """(the key of `tok`'s table, whether it already existed); `fingerprint`: `tokenizer_fingerprint(tok)`."""
    def build(d: Path) -> dict:
        table = vocab_table(tok)
        vocab_schema.write(d / vocab_schema.FILE, table)
        return {"ids": len(table), "special": int(table.special.sum())}

    _, m, reused = publish_folder(store, vocab_schema.KIND, vocab_schema.vocab_inputs(fingerprint), build)
    return m["key"], reused


def load_vocab(store: Store, fingerprint: dict, what: str) -> vocab_schema.Vocab:
    """The table of the tokenizer with this fingerprint (`what`: whose, for the message), its file checked
    against its manifest; refused in one line when the store lacks it."""
    key = vocab_schema.vocab_key(fingerprint)
    m = store.manifest(key)
    if m is None:
        raise vocab_schema.VocabError(
            f"{what}: the store {store} has no vocabulary table {key} for its tokenizer (caches made before "
            f"tables existed lack one): run stage one again with that tokenizer (adpa teacher-cache reuses the "
            f"cache and adds the table) or pull {key} beside it")
    entry = next((e for e in m["shards"] if e["file"] == vocab_schema.FILE), None)
    if entry is None:
        raise vocab_schema.VocabError(f"{key}: its manifest lists no {vocab_schema.FILE}")
    try:
        path = check_file(local_copy(store, key), entry)
    except ShardError as e:
        raise vocab_schema.VocabError(f"{key}: {e}") from None
    return vocab_schema.read(path, int(fingerprint["vocab_size"]))
