"""Tokens as bytes, and two tokenizations of one text aligned by their byte spans: the groundwork of
one teacher cache for students of another tokenizer (`distill.cross_tokenizer`).

A token's bytes are what it contributes to the UTF-8 text it decodes to:
- byte-level BPE (GPT-2, SmolLM2, Llama 3, Qwen): each character of the vocabulary entry stands for one
  byte through GPT-2's printable byte alphabet (`byte_alphabet`);
- SentencePiece-style vocabularies (Llama 2, Mistral, Danube): "\u2581" is a space and `<0xNN>` is the byte
  NN (byte fallback: a character the vocabulary lacks is spelled by its UTF-8 bytes, so a token may hold
  part of a character).
- word-level vocabularies without a decoder (the built-in worlds'): the tokenizer drops whitespace and
  decoding joins words with a space, so a word spells " " + itself.
Special and added tokens (chat markers, EOS) have no bytes in the text: None.

Concatenating a sequence's token bytes gives the text's bytes, so each token's byte span is a cumulative
sum (`byte_ends`), exact even where a token splits a multi-byte character, which character offsets cannot
express. `align` then pairs the shortest runs of tokens of each side that end at the same byte offset: a
run of one token on each side with equal bytes is an exact match; any other run covers the same text with
different pieces (merges that straddle the other side's boundaries).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adpa.schemas.vocab import ROLES, Vocab

SPIECE_SPACE = "\u2581"


def byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character of each byte -> the byte (the inverse of its bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    return decoder is not None and "ByteLevel" in type(decoder).__name__ + repr(decoder)[:200]


def _is_word_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel" and backend.decoder is None


def _spiece_bytes(entry: str) -> bytes:
    if len(entry) == 6 and entry.startswith("<0x") and entry.endswith(">"):
        return bytes([int(entry[3:5], 16)])
    return entry.replace(SPIECE_SPACE, " ").encode("utf-8")


def vocab_bytes(tokenizer) -> list[bytes | None]:
    """Each token id's bytes (None: a special or added token, no text of its own), for byte-level BPE,
    SentencePiece-style and decoder-less word-level vocabularies; any other kind is refused in one line."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids) | {i for i in getattr(tokenizer, "added_tokens_decoder", {})}
    table: list[bytes | None] = [None] * (max(vocab.values()) + 1)
    if _is_byte_level(tokenizer):
        alphabet = byte_alphabet()
        for entry, i in vocab.items():
            if i not in special:
                try:
                    table[i] = bytes(alphabet[c] for c in entry)
                except KeyError:
                    raise ValueError(f"{type(tokenizer).__name__}: entry {i} holds a character outside the byte "
                                     f"alphabet of a byte-level vocabulary") from None
        return table
    if _is_word_level(tokenizer):
        for entry, i in vocab.items():
            if i not in special:
                table[i] = b" " + entry.encode("utf-8")
        return table
    if any(f"<0x{b:02X}>" in vocab for b in (0, 0x41, 0xFF)) or any(SPIECE_SPACE in e for e in list(vocab)[:5000]):
        for entry, i in vocab.items():
            if i not in special:
                table[i] = _spiece_bytes(entry)
        return table
    raise ValueError(f"{type(tokenizer).__name__}: neither a byte-level, a SentencePiece-style nor a word-level "
                     f"vocabulary; its tokens' bytes are unknown")


def vocab_table(tokenizer) -> Vocab:
    """`vocab_bytes` as the stored table: one entry per id of `len(tokenizer)`, a special or added token (or an
    id no entry names) holding its content as a marker."""
    table = vocab_bytes(tokenizer)
    names = {i: t.content for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids):
        names.setdefault(i, t)
    n = max(len(tokenizer), len(table))
    pieces = [table[i] if i < len(table) and table[i] is not None else names.get(i, "").encode("utf-8")
              for i in range(n)]
    special = np.array([i >= len(table) or table[i] is None for i in range(n)], dtype=bool)
    roles = {r: getattr(tokenizer, f"{r}_token_id", None) for r in ROLES}
    return Vocab(pieces, special, {r: int(i) for r, i in roles.items() if isinstance(i, int) and 0 <= i < n})


def byte_ends(ids, table: list[bytes | None]) -> np.ndarray:
    """[n] the byte offset where each token of `ids` ends in the text they spell; a token without bytes (a
    special token) is refused, naming it: the caller aligns text, not markers."""
    lengths = np.empty(len(ids), dtype=np.int64)
    for j, i in enumerate(ids):
        b = table[int(i)] if 0 <= int(i) < len(table) else None
        if b is None:
            raise ValueError(f"token {int(i)} at position {j} has no bytes (a special token or outside the "
                             f"vocabulary)")
        lengths[j] = len(b)
    return np.cumsum(lengths)


@dataclass(frozen=True)
class Run:
    """Tokens [a0, a1) of side a and [b0, b1) of side b that cover the same bytes and no shorter runs do."""

    a0: int
    a1: int
    b0: int
    b1: int

    @property
    def one_to_one(self) -> bool:
        return self.a1 - self.a0 == 1 and self.b1 - self.b0 == 1


def align(a_ends: np.ndarray, b_ends: np.ndarray) -> list[Run]:
    """The shortest runs of tokens on both sides that end at a common byte offset, in order; they partition
    both sequences. The two must spell texts of the same length (the same text, or the caller's error)."""
    if len(a_ends) == 0 or len(b_ends) == 0 or a_ends[-1] != b_ends[-1]:
        total = lambda e: int(e[-1]) if len(e) else 0  # noqa: E731
        raise ValueError(f"the two tokenizations spell texts of {total(a_ends)} and {total(b_ends)} bytes: "
                         f"not one text")
    common = np.intersect1d(a_ends, b_ends)
    a_cut = np.searchsorted(a_ends, common) + 1  # run ends, exclusive
    b_cut = np.searchsorted(b_ends, common) + 1
    a_start = np.concatenate([[0], a_cut[:-1]])
    b_start = np.concatenate([[0], b_cut[:-1]])
    return [Run(int(a0), int(a1), int(b0), int(b1)) for a0, a1, b0, b1 in zip(a_start, a_cut, b_start, b_cut)]
