"""A training micro-batch, end to end, against an independent float64 implementation.

Ours: pairs -> `collate` (plain: right-padded rows; packed: each prompt once with its parts as
branches, several pairs per row) -> the model's transformer -> response positions only -> the output
layer in chunks of 3 positions under activation checkpointing -> the losses.
The reference: the same weights in float64, each sequence run ALONE (no padding) through the
whole model, full-vocabulary log-softmax, explicit loops over pairs and positions. Values and
the gradients of every parameter are compared, for every loss, with realized tokens outside
the teacher's top-k. Splitting the pairs into micro-batches weighted by their share must give
the same gradient as one batch (what the trainer accumulates).
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from adpa.schemas.token_topk import Row
from adpa.stages.distill import objective
from adpa.stages.distill.settings import Distill
from adpa.stages.distill.pair_stream import Example
from adpa.stages.common.lm import OutputLayer

V, K = 64, 5


def tiny_model(seed=0, attn="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=64,
                      attn_implementation=attn)
    return LlamaForCausalLM(cfg).float().eval()


def dist(rng, n):
    x = rng.standard_normal((n, V)) * 2.5
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def make_pairs(seed=0, n_pairs=4):
    rng = np.random.default_rng(seed)
    pairs, truth = [], []
    for i in range(n_pairs):
        p = int(rng.integers(2, 6))
        prompt = rng.integers(0, V, p)
        parts, full = {}, {}
        for name in ("chosen", "rejected", "state"):
            n = int(rng.integers(1, 7))
            ids = np.concatenate([prompt, rng.integers(0, V, n)])
            P, R = dist(rng, n), dist(rng, n)
            top = np.argsort(-P, axis=1)[:, :K]
            tp = np.take_along_axis(P, top, 1)
            parts[name] = Row(input_index=i, side=name, pair_id=f"p{i}", token_ids=ids, prompt_len=p,
                           topk_ids=top, topk_logp=tp.astype(np.float32),
                           tail_logp=np.log1p(-np.exp(tp).sum(1)).astype(np.float32),
                           ref_topk_logp=np.take_along_axis(R, top, 1).astype(np.float32),
                           realized_logp=(-rng.uniform(0.5, 4, n)).astype(np.float32))
            full[name] = (P, R)
        pairs.append(Example(i, parts))
        truth.append(full)
    return pairs, truth


def outside_topk_fraction(pairs):
    n = out = 0
    for ex in pairs:
        for r in ex.parts.values():
            y = r.token_ids[r.prompt_len:]
            out += sum(int(t not in set(ids)) for t, ids in zip(y, r.topk_ids))
            n += len(y)
    return out / n


def reference_loss(model64, pairs, truth, loss, alpha=0.1, gamma=1.5, beta=0.1, mode="signed"):
    def logq(r):
        ids = torch.as_tensor(r.token_ids)[None]
        lq = model64(input_ids=ids).logits[0].log_softmax(-1)
        pos = torch.arange(r.prompt_len - 1, len(r.token_ids) - 1)
        return lq[pos], torch.as_tensor(r.token_ids[r.prompt_len:])

    def kl(r, P):
        lq, _ = logq(r)
        total = 0
        for t in range(len(lq)):
            mask = torch.zeros(V, dtype=torch.bool)
            mask[torch.as_tensor(r.topk_ids[t])] = True
            p = torch.as_tensor(P[t])
            p_tail, q_tail = p[~mask].exp().sum(), lq[t][~mask].exp().sum()
            total = total + (p[mask].exp() * (p[mask] - lq[t][mask])).sum() + p_tail * (p_tail.log() - q_tail.log())
        return total / len(lq)

    per_pair = []
    for ex, full in zip(pairs, truth):
        c = ex.parts["chosen"]
        lq_c, y_c = logq(c)
        sft = -lq_c[torch.arange(len(y_c)), y_c].mean()
        if loss == "sft":
            per_pair.append(sft)
        elif loss == "kd":
            per_pair.append(kl(c, full["chosen"][0]))
        elif loss == "dckd":
            per_pair.append(sft + alpha * (kl(c, full["chosen"][0]) + kl(ex.parts["rejected"], full["rejected"][0])))
        elif loss == "adpa":
            s = ex.parts["state"]
            lq_s, _ = logq(s)
            P, R = (torch.as_tensor(x) for x in full["state"])
            total = 0
            for t in range(len(lq_s)):
                a = torch.as_tensor(s.topk_ids[t])
                adv = P[t, a] - R[t, a]
                if mode == "clip01":
                    adv = adv.clamp(0, 1)
                total = total + (lq_s[t, a].exp() * adv).sum()
            per_pair.append(sft - gamma * total / len(lq_s))
        elif loss == "dpo":
            r = ex.parts["rejected"]
            lq_r, y_r = logq(r)
            pi_w, pi_l = lq_c[torch.arange(len(y_c)), y_c].sum(), lq_r[torch.arange(len(y_r)), y_r].sum()
            ref_w = float(np.sum(c.realized_logp, dtype=np.float64))
            ref_l = float(np.sum(r.realized_logp, dtype=np.float64))
            per_pair.append(-torch.nn.functional.logsigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l))))
    return torch.stack(per_pair).mean()


def ours(model, pairs, loss, mode="signed", splits=(None,), packed=False):
    """The trainer's accumulation: micro-batch losses weighted by their share of the pairs."""
    settings = Distill(loss=loss, advantage=mode)
    out = OutputLayer(model, V)
    total = 0.0
    groups = [pairs] if splits == (None,) else [pairs[a:b] for a, b in splits]
    for g in groups:
        part_loss, _ = objective.micro_loss(model, out, objective.collate(g, loss, 0, packed), loss, settings)
        (part_loss * len(g) / len(pairs)).backward()
        total += part_loss.item() * len(g) / len(pairs)
    return total


CASES = [("sft", "signed"), ("kd", "signed"), ("dckd", "signed"), ("adpa", "signed"), ("adpa", "clip01"),
         ("dpo", "signed")]


@pytest.mark.parametrize("loss,mode", CASES)
@pytest.mark.parametrize("seed,packed", [(0, False), (1, False), (0, True), (1, True)])
def test_micro_batch_matches_float64_full_vocabulary(loss, mode, seed, packed, monkeypatch):
    monkeypatch.setattr(objective, "BLOCK_BYTES", 4 * V * 3)  # chunks of 3 positions: the checkpointed path
    pairs, truth = make_pairs(seed)
    assert outside_topk_fraction(pairs) > 0.5  # most realized tokens lie outside the top-k
    model = tiny_model(seed)
    model64 = copy.deepcopy(model).double()
    value = ours(model, pairs, loss, mode, packed=packed)
    ref = reference_loss(model64, pairs, truth, loss, mode=mode)
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for (name, p), p64 in zip(model.named_parameters(), model64.parameters()):
        torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-4, atol=2e-6, msg=name)


@pytest.mark.parametrize("loss", ["dckd", "adpa", "dpo"])
def test_micro_batches_accumulate_to_the_full_batch(loss):
    pairs, _ = make_pairs(3, n_pairs=5)
    a, b = tiny_model(3), tiny_model(3)
    va = ours(a, pairs, loss)
    vb = ours(b, pairs, loss, splits=((0, 2), (2, 3), (3, 5)))
    assert va == pytest.approx(vb, rel=1e-6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_prompt_tokens_never_contribute():
    """Scored positions are exactly the response positions: prompt tokens are inputs only."""
    pairs, _ = make_pairs(4)
    model = tiny_model(4)
    mb = objective.collate(pairs, "dckd", 0)
    for name, p in mb.parts.items():  # every scored position predicts a response token, each exactly once
        assert len(p.cols) == sum(len(ex.parts[name].token_ids) - ex.parts[name].prompt_len for ex in pairs)
        rows, cols = p.rows.numpy(), p.cols.numpy()
        for r, c in zip(rows, cols):
            ex = pairs[r % len(pairs)]
            name = list(mb.parts)[r // len(pairs)]
            assert c + 1 >= ex.parts[name].prompt_len
    loss, _ = objective.micro_loss(model, OutputLayer(model, V), mb, "dckd", Distill())
    assert torch.isfinite(loss)


def test_pack_respects_the_token_budget():
    pairs, _ = make_pairs(5, n_pairs=9)
    batches = objective.pack(pairs, "adpa", token_budget=40)
    assert sorted(ex.index for b in batches for ex in b) == list(range(9))
    for b in batches:  # adpa reads two parts of a pair: chosen and state
        longest = max(len(ex.parts[n].token_ids) for ex in b for n in ("chosen", "state"))
        assert len(b) == 1 or len(b) * 2 * longest <= 40
        assert objective.collate(b, "adpa", 0).padded_tokens == len(b) * 2 * longest
    batches = objective.pack(pairs, "adpa", token_budget=40, packed=True)
    assert sorted(ex.index for b in batches for ex in b) == list(range(9))
    for b in batches:
        mb = objective.collate(b, "adpa", 0, packed=True)
        assert len(b) == 1 or mb.padded_tokens <= 40


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("loss", ["dckd", "adpa", "dpo"])
def test_packed_rows_equal_plain_rows(loss, attn):
    """Each prompt once, several pairs per row: the same loss and gradients as every part alone, and the
    unique tokens only through the transformer (prompts shared by the parts of a pair: chosen, rejected
    and the generated state have the same rendered prompt)."""
    pairs, _ = make_pairs(15, n_pairs=8)
    a, b = tiny_model(6, attn), tiny_model(6, attn)
    plain, packed = objective.collate(pairs, loss, 0), objective.collate(pairs, loss, 0, packed=True)
    assert any(len(set(r[r >= 0].tolist())) > 1 for r in packed.segment)  # a row that holds two pairs
    names = list(packed.parts)
    unique = sum(len(ex.parts[names[0]].token_ids) + sum(ex.parts[n].tokens for n in names[1:]) for ex in pairs)
    assert packed.forward_tokens == unique < plain.forward_tokens
    assert packed.tokens == plain.tokens and len(packed.input_ids) < len(plain.input_ids)
    assert packed.padded_tokens - packed.forward_tokens < plain.padded_tokens - plain.forward_tokens
    va, vb = ours(a, pairs, loss), ours(b, pairs, loss, packed=True)
    assert va == pytest.approx(vb, rel=1e-5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("leak", ["branch", "segment"])
def test_packed_rows_fail_a_wrong_mask(leak, monkeypatch):
    """The equality above can fail: a mask that lets a branch see its sibling, or a pair the pair before it
    in the same row, changes the gradients beyond that test's tolerance."""
    pairs, _ = make_pairs(15, n_pairs=8)  # a row holds two pairs
    a, b = tiny_model(6), tiny_model(6)
    va = ours(a, pairs, "dckd")
    right = objective.segment_mask

    def leaky(segment, branch, dtype):
        if leak == "branch":
            return right(segment, torch.where(branch >= 0, 0, branch), dtype)
        return right(torch.where(segment >= 0, 0, segment), branch, dtype)

    monkeypatch.setattr(objective, "segment_mask", leaky)
    vb = ours(b, pairs, "dckd", packed=True)
    assert vb != pytest.approx(va, rel=1e-5) or not all(
        torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-6) for pa, pb in zip(a.parameters(), b.parameters()))


def test_kl_to_init_matches_float64_full_vocabulary():
    """The guard's KL(p || q) per response position, against float64 softmaxes of the same models."""
    from adpa.stages.common.lm import HFScorer, Sequence
    p, q = tiny_model(7), tiny_model(8)
    seqs = [Sequence([1, 5, 7, 2, 9, 4], 2), Sequence([3, 3, 8, 1], 3), Sequence([2, 6, 6, 6, 1, 7, 5], 4)]
    got = HFScorer(p, V, 0, token_budget=12).kl_to(HFScorer(q, V, 0, token_budget=12), seqs)
    for s, kl in zip(seqs, got):
        ids = torch.tensor([s.ids])
        with torch.no_grad():
            lp = torch.log_softmax(p.double()(ids).logits[0], -1)
            lq = torch.log_softmax(q.double()(ids).logits[0], -1)
        p.float(), q.float()
        want = (lp.exp() * (lp - lq)).sum(-1)[s.prompt_len - 1:len(s.ids) - 1].numpy()
        assert kl.shape == want.shape and np.allclose(kl, want, atol=1e-5), (kl, want)
    assert all((k >= -1e-6).all() for k in got)


def test_a_lora_student_matches_float64_full_vocabulary(monkeypatch):
    """The same check through a PEFT LoRA student: adapters on attention and MLP layers (B drawn away from
    its zero init so they change the function); only adapter weights get gradients, equal to float64's."""
    from adpa.stages.distill import lora
    from adpa.stages.distill.settings import Lora
    monkeypatch.setattr(objective, "BLOCK_BYTES", 4 * V * 3)
    pairs, truth = make_pairs(6)
    model = tiny_model(6)
    lora.attach(model, Lora(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj", "down_proj")))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    model64 = copy.deepcopy(model).double()
    value = ours(model, pairs, "adpa")
    ref = reference_loss(model64, pairs, truth, "adpa")
    ref.backward()
    assert value == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for (name, p), p64 in zip(model.named_parameters(), model64.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-4, atol=2e-6, msg=name)
        else:
            assert p.grad is None, name


def test_a_packed_pairs_cost_is_the_tokens_of_its_segments():
    pairs, _ = make_pairs(15, n_pairs=8)
    s = pairs[0].parts["state"]  # a prompt of its own: two segments
    pairs[0].parts["state"] = dataclasses.replace(s, token_ids=np.concatenate([[7], s.token_ids]),
                                                  prompt_len=s.prompt_len + 1)
    assert len(objective._segments(pairs[0], ["chosen", "state"])) == 2
    for ex in pairs:
        for loss in ("sft", "dckd", "adpa"):
            names = list(objective.LOSSES[loss].reads)
            assert objective._cost(ex, names, True) == sum(len(s.ids) for s in objective._segments(ex, names))
