"""Batched greedy generation (left-padded, token-budget batches) equals generating each prompt alone."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from adpa.stages.common.lm import generate
from adpa.pipeline.builtin import resolve_model as resolve


def test_left_padded_batches_match_single_prompts(model_store):
    src = resolve("builtin:smollm2-135m-instruct", model_store).source
    model, tok = AutoModelForCausalLM.from_pretrained(src).eval(), AutoTokenizer.from_pretrained(src)
    chats = [[{"role": "user", "content": "What is 12 + 7?"}],
             [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
              {"role": "user", "content": "Name a fruit that is red and sweet, please."}],
             [{"role": "user", "content": "Say yes."}]]
    prompts = [tok.apply_chat_template(c, add_generation_prompt=True, return_dict=False) for c in chats]
    assert len({len(p) for p in prompts}) == 3  # different lengths: padding is exercised
    eos = tok.eos_token_id
    batched = generate(model, prompts, eos, eos, 20, token_budget=10_000)
    alone = [generate(model, [p], eos, eos, 20)[0] for p in prompts]
    assert batched == alone
    assert any(finish == "stop" for _, finish in batched) and all(len(ids) <= 20 for ids, _ in batched)
    assert all((ids[-1] == eos) == (finish == "stop") for ids, finish in batched)
