"""A teacher cache read by a student of another tokenizer (`distill.cross_tokenizer`).

Each cached row (the teacher's ids of prompt + response, its top-k per response position) becomes a row in
the student's ids, made of the text the teacher's ids spell (the vocabulary table stage one stores):

1. The prompt's and the response's bytes are decoded to text and tokenized by the student's tokenizer.
   The cache must be rendered with the student's chat template, so this is the student's own rendering
   (`caches.check_caches` refuses any other unless the row's messages are given, `Conversations`: then the
   student renders the prompt from them and the response from the text before the teacher's first special
   token, and the teacher's eos stands for the student's end-of-turn token). Chat markers travel as their
   content and become the student's special tokens; a marker the template writes through a role variable
   (`{{ eos_token }}`, `{{ bos_token }}`: the teacher's content in the cache's text) is spelled as the
   student's holder of that role, in the text and in the teacher's top-k (`student_markers`), as the
   template would have written it for the student.
2. The two tokenizations of the response are aligned by byte spans (`token_bytes.align`): the shortest
   runs of tokens on both sides that end at a common byte offset. At the first student token of a run both
   models predict the next piece of the same text after the same prefix, so the teacher's distribution
   there says something about the student's; inside a run (a student token that starts within a teacher
   token) it does not, and those positions get the SFT term only.
3. At a run's first position the teacher's probability of a student vocabulary entry is:
   - an exact match: a teacher id of the top-k whose bytes are the entry's (`exact`), its probability;
   - a path extension (GOLD's product along the teacher's path): the teacher's realized tokens
     t_0 .. t_{j-1} of the run followed by a top-k id a at t_j spell the entry: prod_{i<j} p(t_i) * p(a | t_<j).
   These are the leaves of the teacher's tree along the run (`matches`): at each depth the top-k but the
   realized id, whose mass the next depth splits, and at the run's last depth all of them; leaves are
   disjoint events, so their sum, the matched mass, is at most 1. The `width`
   largest entries are kept; the rest of the teacher's mass (1 - kept) is one "rest" bin, as the tail bin
   of the same-tokenizer losses. The teacher's top-k entries with no exact student entry are kept, sorted,
   for the ULD term (sorted probabilities compared rank by rank, Boizard et al. 2024).

What this loses: the mass of teacher candidates that spell no student entry (the matched share, per step in
metrics.jsonl), and every position inside a run.

ADPA reads an advantage row the same way: an entry's advantage is log p - log r of the same leaves
(`matches` carries the reference's log-probs along the same paths), so ADPA is taken on the matched part
of the top-k. Its states are those stage one generated, with the cache's tokenizer (a student of another
tokenizer cannot generate in stage one, whose models share one vocabulary); `adpa+`, whose states come
from the student it trains, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from jinja2 import TemplateError

from adpa.schemas import sequences
from adpa.schemas.token_topk import Row
from adpa.schemas.vocab import ROLES, Vocab
from adpa.stages.common.chat import render_prompt, render_response
from adpa.stages.common.token_bytes import align
from adpa.stages.distill.pair_stream import Example

PAD_LOGP = -1e4  # a padded entry: exp() is 0 in float32, and finite, so no 0 * inf in a divergence
MAX_MATCHED = 1.0 - 1e-6  # the rest bin keeps a sliver: its log stays finite


@dataclass(frozen=True)
class CrossRow:
    """One part of a pair in the student's ids; per response position (n = len(token_ids) - prompt_len):
    the teacher's matched entries (student ids, log-probs, which are real), the log of the rest's mass,
    whether the position starts an aligned run, the matched mass, and the teacher's unmatched top-k
    probabilities sorted (0-padded)."""

    pair_id: str
    side: str
    input_index: int
    token_ids: np.ndarray  # [prompt + n] student ids
    prompt_len: int
    topk_ids: np.ndarray  # [n, width] int64
    topk_logp: np.ndarray  # [n, width] float32, PAD_LOGP where not valid
    topk_valid: np.ndarray  # [n, width] bool
    tail_logp: np.ndarray  # [n] float32: log(1 - matched)
    aligned: np.ndarray  # [n] bool
    matched: np.ndarray  # [n] float32
    unmatched_p: np.ndarray  # [n, width] float32
    ref_topk_logp: np.ndarray | None = None  # [n, width] the reference's log-probs of the entries (advantage rows)


def template_roles(tok) -> set[str]:
    """The special-token roles (`vocab.ROLES`) that `tok`'s chat template writes through its variables."""
    marks = {f"{r}_token": f"\x00{r}\x00" for r in ROLES}  # apply_chat_template's kwargs override the tokenizer's
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
             {"role": "assistant", "content": "a"}]
    try:
        text = tok.apply_chat_template(probe, tokenize=False, **marks) + \
            tok.apply_chat_template(probe[1:2], tokenize=False, add_generation_prompt=True, **marks)
    except TemplateError:  # a template that refuses a system turn (raise_exception): the user turn alone
        text = tok.apply_chat_template(probe[1:], tokenize=False, **marks) + \
            tok.apply_chat_template(probe[1:2], tokenize=False, add_generation_prompt=True, **marks)
    return {r for r in ROLES if f"\x00{r}\x00" in text}


def student_markers(teacher: Vocab, student: Vocab, tok) -> Vocab:
    """The teacher's table with each role marker that the (shared) chat template writes through its variable
    spelled as the student's holder of that role. Refused in one line where that cannot be read off the
    cache's text: a role one side lacks, a teacher id holding two such roles the student holds apart, or a
    marker the template also writes literally."""
    pieces, source, done = list(teacher.pieces), tok.chat_template or "", {}
    for role in sorted(template_roles(tok)):
        t, s = teacher.roles.get(role), student.roles.get(role)
        if t is None or s is None:
            side = "teacher's" if t is None else "student's"
            raise ValueError(f"the chat template writes {role}_token, which the {side} tokenizer does not have: "
                             f"the student's own rendering cannot be read off the cache's text")
        want = student.pieces[s]
        if teacher.pieces[t] == want:
            continue
        if done.get(t, want) != want or teacher.pieces[t].decode("utf-8", "replace") in source:
            mine = teacher.pieces[t].decode("utf-8", "replace")
            raise ValueError(f"the chat template writes {role}_token, the teacher's {mine!r}, which also stands for "
                             f"something else in the cache's text; the student's is {want.decode('utf-8', 'replace')!r}")
        pieces[t], done[t] = want, want
    return replace(teacher, pieces=pieces)


@dataclass(frozen=True)
class Conversations:
    """What re-renders a cache made with another chat template than the student's: each input row's prompt
    messages, by `input_index` (parsed from the recipe's data, the cache's own)."""

    prompts: dict[int, list[dict]]


def turn_end(tok) -> int:
    """The id that ends an assistant turn in `tok`'s own rendering: its eos where the turn ends with it, else the
    first special token after the text (not unk or pad: a probe's text may be unknown to a word-level vocabulary)."""
    probe = [{"role": "user", "content": "u"}]
    ids = render_response(tok, probe, render_prompt(tok, probe), "a") or []
    if tok.eos_token_id in ids:
        return tok.eos_token_id
    markers = set(tok.all_special_ids) - {tok.unk_token_id, tok.pad_token_id}
    end = next((i for i in ids if i in markers), None)
    if end is None:
        raise ValueError(f"{tok.name_or_path or 'the student'}: its chat template ends an assistant turn without a "
                         f"special token; a cache rendered with another template cannot be re-rendered for it")
    return end


class Bridge:
    """The teacher's and the student's vocabularies and the student's tokenizer; `example` translates a pair.
    With `conversations`, the cache was rendered with another chat template: each row is re-rendered (`rerender`)
    and the teacher's eos (where stage one cut its responses) stands for the student's end-of-turn token."""

    def __init__(self, teacher: Vocab, student: Vocab, tok, width: int, conversations: Conversations | None = None):
        self.conv, self.end = conversations, None
        if conversations is None:
            teacher = student_markers(teacher, student, tok)
        else:
            self.end = turn_end(tok)
            if "eos" in teacher.roles:  # so the bytes, and the top-k entry, match
                pieces = list(teacher.pieces)
                pieces[teacher.roles["eos"]] = student.pieces[self.end]
                teacher = replace(teacher, pieces=pieces)
        self.teacher, self.student, self.tok, self.width = teacher, student, tok, width
        self.index = student.index()
        self.exact = np.array([self.index.get((bool(teacher.special[i]), p), -1) for i, p in enumerate(teacher.pieces)],
                              dtype=np.int64)
        self.longest = max(map(len, student.pieces))

    def example(self, ex: Example) -> Example:
        return replace(ex, parts={n: self.row(r) for n, r in ex.parts.items()})

    def text(self, ids) -> bytes:
        return b"".join(self.teacher.pieces[int(i)] for i in ids)

    def encode(self, data: bytes) -> list[int]:
        """The student's ids of a text (its markers parsed as the student's special tokens)."""
        return list(self.tok(data.decode("utf-8", "replace"), add_special_tokens=False)["input_ids"])

    def tokenize(self, r: Row | sequences.Row) -> tuple[list[int], list[int]]:
        """The student's ids of a cached row's prompt and response: the whole text tokenized at once, as the
        student renders a conversation (a SentencePiece tokenizer marks only the text's start with a space),
        cut after the prompt's ids; the response alone when a merge straddles the cut."""
        if self.conv is not None:
            return self.rerender(r)
        head, tail = self.text(r.token_ids[:r.prompt_len]), self.text(r.token_ids[r.prompt_len:])
        prompt, full = self.encode(head), self.encode(head + tail)
        if full[:len(prompt)] == prompt:
            return prompt, full[len(prompt):]
        return prompt, self.encode(tail)

    def rerender(self, r: Row | sequences.Row) -> tuple[list[int], list[int]]:
        """The student's own rendering of a cached row's conversation: its prompt from the row's messages, its
        response from the text of the teacher's response before its first special token (where the teacher's
        template ends the turn); a response without one (cut at max_length) stays without the student's end."""
        messages = self.conv.prompts.get(int(r.input_index))
        if messages is None:
            raise ValueError(f"cache row {r.pair_id} ({r.side}): input row {r.input_index} is not among the recipe's "
                             f"data rows: the data is not the cache's")
        prompt = render_prompt(self.tok, messages)
        ids = [int(i) for i in r.token_ids[r.prompt_len:]]
        end = next((j for j, i in enumerate(ids) if self.teacher.special[i]), None)
        text = self.text(ids[:end]).decode("utf-8", "replace")
        response = render_response(self.tok, messages, prompt, text)
        if response is None:
            raise ValueError(f"the student's chat template does not extend its prompt with a response (cache row "
                             f"{r.pair_id}, {r.side})")
        if end is None and self.end in response:
            response = response[:response.index(self.end)]
        return prompt, response

    def row(self, r: Row | sequences.Row) -> CrossRow | sequences.Row:
        """A cached row in the student's ids; a row without top-k (sft reads token ids alone) stays one."""
        prompt, response = self.tokenize(r)
        if not isinstance(r, Row):
            return replace(r, token_ids=np.array(prompt + response, np.int64), prompt_len=len(prompt),
                           realized_logp=None)
        runs = self.alignment(r.token_ids[r.prompt_len:], response)
        n, w = len(response), self.width
        ids, logp = np.zeros((n, w), np.int64), np.full((n, w), PAD_LOGP, np.float32)
        ref = np.full((n, w), PAD_LOGP, np.float32)
        valid, aligned = np.zeros((n, w), bool), np.zeros(n, bool)
        matched, unmatched = np.zeros(n, np.float32), np.zeros((n, w), np.float32)
        for a0, m, b0, _ in runs:
            s_ids, s_logp, s_ref = (x[:w] for x in self.entries(r, a0, m))
            k = len(s_ids)
            ids[b0, :k], logp[b0, :k], ref[b0, :k], valid[b0, :k] = s_ids, s_logp, s_ref, True
            aligned[b0], matched[b0] = True, min(float(np.exp(logp[b0, :k]).sum()), MAX_MATCHED)
            rest = np.sort(np.exp(r.topk_logp[a0][self.exact[r.topk_ids[a0]] < 0]))[::-1][:w]
            unmatched[b0, :len(rest)] = rest
        return CrossRow(r.pair_id, r.side, r.input_index, np.array(prompt + response, np.int64), len(prompt), ids, logp,
                        valid, np.log1p(-matched).astype(np.float32), aligned, matched, unmatched,
                        ref if r.ref_topk_logp is not None else None)

    def entries(self, r: Row, a0: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`matches` as arrays, most likely first: (student ids, teacher log-probs, reference log-probs). A run
        of one teacher token whose top-k ids map to distinct student entries (most runs on text) is the
        top-k itself, in its stored order, without the walk."""
        if m == 1:
            s = self.exact[r.topk_ids[a0]]
            keep = s >= 0
            if len(np.unique(s[keep])) == int(keep.sum()):
                ref = r.ref_topk_logp[a0][keep] if r.ref_topk_logp is not None else np.zeros(int(keep.sum()))
                return s[keep], r.topk_logp[a0][keep], ref
        top = sorted(self.matches(r, a0, m).items(), key=lambda kv: -kv[1][0])
        return (np.array([t[0] for t in top], np.int64), np.array([t[1][0] for t in top]),
                np.array([t[1][1] for t in top]))

    def matches(self, r: Row, a0: int, m: int) -> dict[int, tuple[float, float]]:
        """Student id -> (the teacher's log-prob of it at response position a0, the reference's (0 on a row
        without one, unused)): the leaves of the teacher's tree along the run's m realized tokens (at each depth
        the top-k ids but the realized one, whose mass goes one level deeper; at the last depth all of
        them), each spelling prefix + its piece. Leaves are disjoint events, so the matched mass is at most
        1; leaves that spell one entry are summed (on both models: the advantage of the entry is that of
        their union)."""
        out: dict[int, tuple[float, float]] = {}
        prefix, path = b"", np.zeros(2)
        ref = r.ref_topk_logp if r.ref_topk_logp is not None else np.zeros(r.topk_logp.shape, np.float32)
        ref_realized = r.ref_realized_logp if r.ref_realized_logp is not None else np.zeros(len(r.realized_logp))
        for j in range(a0, a0 + m):
            realized, last = int(r.token_ids[r.prompt_len + j]), j == a0 + m - 1
            for tid, lp, rp in zip(r.topk_ids[j].tolist(), r.topk_logp[j].tolist(), ref[j].tolist()):
                if tid == realized and not last:
                    continue
                s = int(self.exact[tid]) if not prefix else \
                    (-1 if self.teacher.special[tid] else self.index.get((False, prefix + self.teacher.pieces[tid]), -1))
                if s >= 0:
                    v = path + (lp, rp)
                    out[s] = tuple(np.logaddexp(out[s], v)) if s in out else tuple(v)
            prefix += self.teacher.pieces[realized]
            path = path + (float(r.realized_logp[j]), float(ref_realized[j]))
            if len(prefix) >= self.longest:  # no longer entry to spell
                break
        return out

    def alignment(self, teacher_ids, student_ids) -> list[tuple[int, int, int, int]]:
        """Runs of the two tokenizations of one response (`token_bytes.align`) over the longest common byte
        prefix both end at, as (teacher position a0, teacher tokens m, student position b0, student tokens n):
        a response cut mid-character, or a student tokenizer that adds a leading space (SentencePiece), leaves
        the rest of that side unaligned rather than misaligned."""
        t_pieces = [self.teacher.pieces[int(i)] for i in teacher_ids]
        s_pieces = [self.student.pieces[int(i)] for i in student_ids]
        t_text, s_text = b"".join(t_pieces), b"".join(s_pieces)
        shift = int(s_text[:1] == b" " and t_text[:1] != b" ")  # a prepended space, not in the teacher's text
        t_ends = np.cumsum([len(x) for x in t_pieces], dtype=np.int64)
        s_ends = np.cumsum([len(x) for x in s_pieces], dtype=np.int64) - shift
        same = _common_prefix(t_text, s_text[shift:])
        first = int(np.searchsorted(s_ends, 0, side="right"))  # student tokens that are only the prepended space
        common = np.intersect1d(t_ends[t_ends <= same], s_ends[first:][s_ends[first:] <= same])
        if not len(common):
            return []
        end = common[-1]
        nt, ns = int(np.searchsorted(t_ends, end, side="right")), int(np.searchsorted(s_ends, end, side="right"))
        runs = align(t_ends[:nt], s_ends[first:ns])
        return [(run.a0, run.a1 - run.a0, first + run.b0, run.b1 - run.b0) for run in runs]


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo
