"""The stage-one artifacts a loss reads, and the checks that refuse one that cannot serve a student.

A loss names its caches (`losses.Reads.cache`: teacher_topk, advantage, student_logp); the caller
names an artifact key for each. Before anything is trained each must be complete in the store, of
the right kind, hold the columns the loss reads, and be made with the student's vocabulary (and,
when rendered with the student's template, that template). Each refusal is one line naming the cache.
"""

from __future__ import annotations

from pathlib import Path

from adpa.artifacts import Store
from adpa.artifacts.reader import ArtifactReader
from adpa.schemas.manifest import ManifestError
from adpa.schemas.vocab import Vocab
from adpa.stages.common.tokenizers import tokenizer_fingerprint
from adpa.stages.common.vocab_artifact import load_vocab
from adpa.stages.distill.losses import LOSSES, caches_of

# cache name -> the artifact kind it is; columns a loss may need -> (layout flag, column name)
CACHE_KINDS = {"teacher_topk": "teacher-topk", "advantage": "advantage", "student_logp": "seq-logp"}
COLUMNS = {"ref_topk": ("with_ref", "ref_topk_logp"), "realized_logp": ("with_logp", "realized_logp")}


class CacheRefused(ValueError):
    pass


def locate(store: Store, loss: str, caches: dict[str, str]) -> dict[str, Path]:
    """The folders of the caches `loss` reads (name -> folder), each complete in `store`."""
    missing = [name for name in caches_of(loss) if name not in caches]
    if missing:
        raise CacheRefused(f"loss {loss} reads {', '.join(missing)}, and no artifact was named for it")
    dirs = {}
    for name in caches_of(loss):
        key = caches[name]
        if store.manifest(key) is None:
            raise CacheRefused(f"cache {key} ({name}) is not complete in store {store}: run stage one "
                               f"(adpa teacher-cache) for this recipe, or pull the artifact (adpa cache pull URL)")
        dirs[name] = store.location(key)
    return dirs


CROSS_LOSSES = ("sft", "kd", "dckd", "adpa")  # dpo reads the student init's log-probs, in the cache's ids


def check_caches(dirs: dict[str, Path], loss: str, tok, init_identity: dict, cross: bool = False,
                 rerender: bool = False) -> int:
    """Refuse caches that cannot train this student with this loss; returns the vocabulary size of the output
    layer (the cache's, or with `cross` (distill.cross_tokenizer) the student's). `rerender`: caches of another
    chat template are re-rendered from their messages (`cross_tokenizer.Conversations`)."""
    fp = tokenizer_fingerprint(tok)
    if cross and loss not in CROSS_LOSSES:
        raise CacheRefused(f"distill.cross_tokenizer trains {', '.join(CROSS_LOSSES)}; loss {loss} reads the "
                           f"student init's log-probs, which a cache holds in its own ids")
    vocab = None
    for name, d in dirs.items():
        key = d.name
        columns = {c for r in LOSSES[loss].reads.values() if r.cache == name for c in r.columns}
        # token ids alone (sft) come from any sequences artifact of the same rendering
        kinds = (CACHE_KINDS[name],) if columns or name != "student_logp" else (CACHE_KINDS[name], "tokenized")
        try:
            reader = ArtifactReader(d)
        except (ValueError, ManifestError, FileNotFoundError) as e:
            raise CacheRefused(f"cache {key}: {e}") from None
        m = reader.manifest
        if m["kind"] not in kinds:
            raise CacheRefused(f"cache {key} is a {m['kind']} artifact; loss {loss} reads {name} from a "
                               f"{' or '.join(kinds)} artifact")
        for c in sorted(columns & set(COLUMNS)):
            flag, column = COLUMNS[c]
            if not getattr(reader.layout, flag):
                raise CacheRefused(f"cache {key} ({m['kind']}) has no {column} column, which loss {loss} needs")
        render = m["inputs"].get("render", {})
        made = render.get("tokenizer", {})
        same = made.get("vocab_sha256") == fp["vocab_sha256"] and reader.layout.vocab_size == fp["vocab_size"]
        if not same and not cross:
            raise CacheRefused(f"cache {key} was made with another vocabulary ({reader.layout.vocab_size} ids, sha256 "
                               f"{str(made.get('vocab_sha256'))[:12]}) than the student's ({fp['vocab_size']} ids, "
                               f"sha256 {fp['vocab_sha256'][:12]}): --set distill.cross_tokenizer=true trains it by "
                               f"aligning the two tokenizations by byte spans")
        if (cross or render.get("template_from") == "student") and \
                made.get("chat_template_sha256") != fp["chat_template_sha256"]:
            if not (cross and rerender):
                raise CacheRefused(f"cache {key} was rendered with another chat template than the student's (sha256 "
                                   f"{str(made.get('chat_template_sha256'))[:12]} vs {fp['chat_template_sha256'][:12]})"
                                   + ("; adpa distill re-renders it from the recipe's data when that data is the "
                                      "cache's" if cross else ""))
        if "realized_logp" in columns and m["inputs"].get("model") != init_identity:
            raise CacheRefused(f"cache {key} holds log-probs of {m['inputs'].get('model')}, not of the student's "
                               f"init model {init_identity} (the reference of {loss})")
        vocab = fp["vocab_size"] if cross else reader.layout.vocab_size
    return vocab


def teacher_vocab(store: Store, dirs: dict[str, Path]) -> tuple[Vocab, int]:
    """The vocabulary table of the tokenizer that rendered the caches (one recipe: one tokenizer), and the
    top-k caches' k (1 when the loss reads token ids alone: sft)."""
    name = next((n for n in dirs if n != "student_logp"), "student_logp")
    reader = ArtifactReader(dirs[name])
    return (load_vocab(store, reader.manifest["inputs"]["render"]["tokenizer"], f"cache {dirs[name].name} ({name})"),
            getattr(reader.layout, "k", 1))


def stage_one_drops(dirs: dict[str, Path]) -> dict[str, int]:
    """The input rows stage one dropped, by reason (every cache of one recipe drops the same rows)."""
    return next(iter(ArtifactReader(p).manifest for p in dirs.values()))["dropped"]
