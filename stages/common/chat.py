"""A conversation's token ids as a tokenizer's own chat template renders them: the prompt with the generation
prompt, and a response through its end-of-turn (the last eos), so that every stage cuts sequences alike."""

from __future__ import annotations


def render_prompt(tok, messages: list[dict]) -> list[int]:
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def render_response(tok, messages: list[dict], prompt_ids: list[int], response: str) -> list[int] | None:
    """Response ids (through the end-of-turn token), or None when the template does not extend the prompt."""
    full = list(tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=True,
                                        return_dict=False))
    if full[:len(prompt_ids)] != prompt_ids:
        return None
    resp = full[len(prompt_ids):]
    eos = tok.eos_token_id
    if eos is not None and eos in resp:
        resp = resp[:len(resp) - resp[::-1].index(eos)]
    return resp
