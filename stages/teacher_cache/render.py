"""Token ids of every sequence, rendered by ONE chat template (by default the student's).

The student later trains on exactly the ids the teacher scored. A response's ids are the full
conversation's ids after the prompt's (rendered with the generation prompt), cut after the
final end-of-turn token, so chosen, rejected and generated responses all end the same way and
the end-of-sequence position is scored.
"""

from __future__ import annotations

from dataclasses import dataclass

from adpa.stages.common.chat import render_prompt, render_response
from adpa.stages.teacher_cache.pairs import Drop, Pair


@dataclass
class Encoded:
    pair: Pair
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: int  # sides whose response was cut to max_length


def encode_pair(tok, pair: Pair, max_length: int) -> Encoded | Drop:
    """Encoded pair, or the drop reason. Responses longer than the room left are cut, keeping their start."""
    prompt = render_prompt(tok, pair.prompt)
    room = max_length - len(prompt)
    if room < 1:
        return Drop.prompt_too_long
    sides, truncated = [], 0
    for text in (pair.chosen, pair.rejected):
        ids = render_response(tok, pair.prompt, prompt, text)
        if ids is None:
            return Drop.template_mismatch
        if not ids:
            return Drop.empty_response
        if len(ids) > room:
            ids, truncated = ids[:room], truncated + 1
        sides.append(ids)
    if sides[0] == sides[1]:
        return Drop.identical_responses
    return Encoded(pair, prompt, sides[0], sides[1], truncated)
