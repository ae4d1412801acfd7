"""The vocabulary table (`adpa.vocab` 1.1): each token id's bytes, so that a student of another tokenizer
can read a cache (it re-tokenizes the text the teacher's ids spell and aligns the two by byte spans).

One table per tokenizer, in a `vocab-<20 hex>` artifact of its own (schema `adpa.files`, one file
`vocab.arrow`) whose key is the hash of the tokenizer's fingerprint, the one stage one's artifacts
record in `inputs.render.tokenizer`: a cache names its table without a new column or a new key, and a
cache made before tables existed gets one when stage one runs again with its tokenizer.

`vocab.arrow` is an Arrow IPC stream of one record batch, row i = token id i:

| column | type | meaning |
|---|---|---|
| `piece` | binary | the bytes the token adds to the UTF-8 text; a special token's (chat markers, EOS): its content |
| `special` | bool | a special or added token: its piece is a marker, never text |
| `roles` | list<string> | the special-token roles this id holds (`bos`, `eos`, `pad`, `unk`; mostly empty) |

A piece spells text exactly where a token splits a multi-byte character (byte fallback, byte-level BPE).
The roles say what a chat template's `{{ eos_token }}` wrote in a cache's text (1.0 tables had no roles; their
key differs, so a 1.1 reader never meets one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from adpa.schemas import files
from adpa.schemas.keys import artifact_key

NAME = "adpa.vocab"
VERSION = "1.1"
KIND = "vocab"
FILE = "vocab.arrow"
MAX_IDS = 1 << 22  # the largest vocabularies in use hold ~256k ids
MAX_PIECE = 1024  # bytes; real pieces are at most a few dozen
MAX_FILE_BYTES = 256 << 20
ROLES = ("bos", "eos", "pad", "unk")  # transformers' special-token attributes a chat template writes
SCHEMA = pa.schema([pa.field("piece", pa.binary(), nullable=False), pa.field("special", pa.bool_(), nullable=False),
                    pa.field("roles", pa.list_(pa.string()), nullable=False)],
                   metadata={"adpa.schema": NAME, "adpa.schema_version": VERSION})


class VocabError(ValueError):
    """A vocabulary table that must not be used; the message names the file and what is wrong."""


def vocab_key(tokenizer_fingerprint: dict) -> str:
    """The key of the table of the tokenizer with this fingerprint (`inputs.render.tokenizer` of a cache)."""
    return artifact_key(KIND, vocab_inputs(tokenizer_fingerprint), {"name": files.NAME, "version": files.VERSION})


def vocab_inputs(tokenizer_fingerprint: dict) -> dict:
    return {"tokenizer": tokenizer_fingerprint, "table": {"name": NAME, "version": VERSION}}


@dataclass(frozen=True)
class Vocab:
    """A tokenizer's pieces: `pieces[i]` the bytes of id i (a special token's: its content), `special[i]`, and
    `roles`: role (ROLES) -> the id that holds it."""

    pieces: list[bytes]
    special: np.ndarray  # [V] bool
    roles: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pieces)

    def index(self) -> dict[tuple[bool, bytes], int]:
        """(special, piece) -> the lowest id with it: a text piece never stands for a marker, nor the reverse."""
        out: dict[tuple[bool, bytes], int] = {}
        for i in range(len(self.pieces) - 1, -1, -1):
            out[(bool(self.special[i]), self.pieces[i])] = i
        return out


def write(path: Path, vocab: Vocab) -> None:
    """One record batch; the caller makes the write atomic (an artifact folder is sealed once complete)."""
    held: list[list[str]] = [[] for _ in vocab.pieces]
    for role, i in sorted(vocab.roles.items()):
        held[i].append(role)
    table = pa.record_batch([pa.array(vocab.pieces, pa.binary()), pa.array(vocab.special.tolist(), pa.bool_()),
                             pa.array(held, pa.list_(pa.string()))], schema=SCHEMA)
    options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", 3))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA, options=options) as w:
        w.write_batch(table)


def read(path: Path, vocab_size: int) -> Vocab:
    """The table at `path`, checked: the schema, one row per id of a `vocab_size` vocabulary, bounded pieces."""
    name = Path(path).name
    if not 0 < vocab_size <= MAX_IDS:
        raise VocabError(f"{name}: a vocabulary of {vocab_size} ids is outside 1..{MAX_IDS}")
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
        raise VocabError(f"{name}: {size} bytes, more than the {MAX_FILE_BYTES} a vocabulary table may hold")
    try:
        with pa.OSFile(str(path), "rb") as source:
            reader = pa.ipc.open_stream(source)
            if not reader.schema.equals(SCHEMA, check_metadata=True):
                raise VocabError(f"{name}: not an {NAME} {VERSION} table (its Arrow schema differs)")
            batches = list(reader)
    except (pa.ArrowInvalid, OSError) as e:
        raise VocabError(f"{name}: not a readable Arrow IPC stream ({str(e).splitlines()[0]})") from None
    if len(batches) != 1 or batches[0].num_rows != vocab_size:
        rows = sum(b.num_rows for b in batches)
        raise VocabError(f"{name}: {rows} rows in {len(batches)} batches; expected one batch of {vocab_size} ids")
    batch = batches[0]
    batch.validate(full=True)
    pieces = batch.column(0).to_pylist()
    if max(map(len, pieces)) > MAX_PIECE:
        raise VocabError(f"{name}: a piece longer than {MAX_PIECE} bytes")
    return Vocab(pieces, batch.column(1).to_numpy(zero_copy_only=False).astype(bool), _roles(name, batch.column(2)))


def _roles(name: str, column) -> dict[str, int]:
    """role -> id from the roles column: known roles, each held by one id at most."""
    lengths = np.diff(column.offsets.to_numpy())
    ids, held = np.repeat(np.arange(len(column)), lengths), column.flatten().to_pylist()
    if len(held) > len(ROLES) or not set(held) <= set(ROLES) or len(set(held)) != len(held):
        raise VocabError(f"{name}: its roles column holds {len(held)} entries, not each of {', '.join(ROLES)} "
                         f"at most once")
    return {role: int(i) for role, i in zip(held, ids)}
