"""Stage two: train a student on stage one's artifacts; the student becomes an artifact too.

For a recipe and a loss: find the artifacts the loss reads (the keys stage one computes for
the same recipe, or keys given explicitly), refuse any that cannot serve this student (one line
naming the cache), train, and save the student with `save_pretrained`, its tokenizer and chat
template, a model card, metrics.jsonl and loss.png in the run folder. The student is then
published in the store under a key of everything that went into it (init model, loss,
settings, cache keys): the same run asked again is reused, not retrained.

ADPA+ chains two runs: DCKD from the student's init, then ADPA from the DCKD student on states
that the DCKD student generated (stage one produces those states and their advantages).
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from artifacts import Store
from artifacts.folders import publish_folder
from artifacts.keys import artifact_key
from artifacts.reader import ArtifactReader
from artifacts.store import MANIFEST
from pipeline.recipe import Recipe
from schemas import files
from schemas.manifest import ManifestError
from stages import models as model_sources
from stages import checkpoints, parallel, run_report, trainer
from stages.objective import Settings
from stages.pair_stream import PairStream, artifacts_for
from stages.tokenizer_check import tokenizer_fingerprint

# artifact -> (kind, layout flag the loss needs, the column that flag brings)
CACHE_KINDS = {"teacher_topk": ("teacher-topk", None, None),
               "advantage": ("advantage", "with_ref", "ref_topk_logp"),
               "student_logp": ("seq-logp", "with_logp", "realized_logp")}
# settings that change only speed or float summation order, not what is learned
NOT_IN_KEY = ("save_every", "token_budget", "gradient_checkpointing")


class CacheRefused(ValueError):
    pass


@dataclass
class Trained:
    loss: str
    key: str
    status: str  # built | resumed | reused
    model_dir: Path  # the student's folder in the store
    run_dir: Path
    summary: dict


def planned_caches(recipe: Recipe, store: Store) -> dict[str, str]:
    """The stage-one artifact keys of this recipe, computed from tokenizers and data without loading a
    model (built-in models that are not in the store yet are built first: their keys name them)."""
    from stages.teacher_cache import planned_keys, setup
    return planned_keys(setup(recipe, store, False, lambda *_: None))


def check_caches(dirs: dict[str, Path], loss: str, tok, init_identity: dict) -> int:
    """Refuse caches that cannot train this student with this loss; returns the shared vocabulary size."""
    fp = tokenizer_fingerprint(tok)
    vocab = None
    for name, d in dirs.items():
        key = Path(d).name
        kind, flag, column = CACHE_KINDS[name]
        kinds = (kind, "tokenized") if loss == "sft" else (kind,)  # SFT needs token ids only
        if name == "student_logp" and loss != "dpo":
            flag = None
        try:
            reader = ArtifactReader(d)
        except (ValueError, ManifestError, FileNotFoundError) as e:
            raise CacheRefused(f"cache {key}: {e}") from None
        m = reader.manifest
        if m["kind"] not in kinds:
            raise CacheRefused(f"cache {key} is a {m['kind']} artifact; loss {loss} reads {name} from a "
                               f"{' or '.join(kinds)} artifact")
        if flag and not getattr(reader.layout, flag):
            raise CacheRefused(f"cache {key} ({m['kind']}) has no {column} column, which loss {loss} needs")
        render = m["inputs"].get("render", {})
        made = render.get("tokenizer", {})
        if made.get("vocab_sha256") != fp["vocab_sha256"] or reader.layout.vocab_size != fp["vocab_size"]:
            raise CacheRefused(f"cache {key} was made with another vocabulary ({reader.layout.vocab_size} ids, sha256 "
                               f"{str(made.get('vocab_sha256'))[:12]}) than the student's ({fp['vocab_size']} ids, "
                               f"sha256 {fp['vocab_sha256'][:12]})")
        if render.get("template_from") == "student" and made.get("chat_template_sha256") != fp["chat_template_sha256"]:
            raise CacheRefused(f"cache {key} was rendered with another chat template than the student's "
                               f"(sha256 {str(made.get('chat_template_sha256'))[:12]} vs {fp['chat_template_sha256'][:12]})")
        if loss == "dpo" and m["inputs"].get("model") != init_identity:
            raise CacheRefused(f"cache {key} holds log-probs of {m['inputs'].get('model')}, not of the student's "
                               f"init model {init_identity} (the reference of {loss})")
        vocab = reader.layout.vocab_size
    return vocab


def _link_or_copy(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Hard links where the file system allows (no second copy of the weights), copies elsewhere."""
    for p in sorted(q for q in src.iterdir() if q.name not in skip):
        try:
            os.link(p, dst / p.name)
        except OSError:
            shutil.copy2(p, dst / p.name)


def train_one(recipe: Recipe, store: Store, loss: str, init_spec: str, caches: dict[str, str], run_dir: Path,
              resume: bool = False, say=print, ranks: parallel.Ranks | None = None, label: str | None = None,
              command: str = "") -> Trained:
    """One training run: `loss` is what the objective computes (sft kd dckd adpa dpo), `label` what the
    run is called (adpa+ trains its second stage as adpa)."""
    import torch

    ranks = ranks or parallel.Ranks()
    label = label or loss
    d = recipe.distill
    needed = {name: caches[name] for name in artifacts_for(loss)}
    dirs = {}
    for name, key in needed.items():
        if store.manifest(key) is None:
            raise CacheRefused(f"cache {key} ({name}) is not complete in store {store.root}: run "
                               f"`adpa teacher-cache -r {recipe.path or recipe.name}` or `adpa cache pull {key}`")
        dirs[name] = store.path(key)
    init = model_sources.resolve(init_spec, store)
    tok = model_sources.load_tokenizer(init)
    vocab = check_caches(dirs, loss, tok, init.identity)

    device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
    autocast = {"auto": "bfloat16" if device.startswith("cuda") else None, "float32": None,
                "bfloat16": "bfloat16"}[d.dtype]
    settings = {k: v for k, v in asdict(d).items() if k not in NOT_IN_KEY}
    settings["lr"] = d.sft_lr if loss == "sft" else d.lr
    settings.pop("sft_lr")
    settings["loss"] = label
    inputs = {"init": init.identity, "loss": label, "caches": needed, "settings": settings,
              "precision": autocast or "float32"}
    key = artifact_key("student", inputs, {"name": files.NAME, "version": files.VERSION})
    run_dir = Path(run_dir)
    if store.manifest(key) is not None:
        say(f"student ({label}): complete artifact {key} reused")
        if ranks.rank == 0 and not (run_dir / "model").exists():  # the run folder shows the student either way
            (run_dir / "model").mkdir(parents=True)
            _link_or_copy(store.path(key), run_dir / "model", skip=(MANIFEST,))
        return Trained(label, key, "reused", store.path(key), run_dir, store.manifest(key)["stats"])

    stream = PairStream(dirs, loss, d.seed, d.shuffle_buffer, d.batch_pairs)
    dropped = next(iter(ArtifactReader(p).manifest for p in dirs.values()))["dropped"]
    say(f"student ({label}): {init_spec} on {stream.n_pairs} pairs"
        + (f" (stage one dropped {sum(dropped.values())}: {dropped})" if dropped else "")
        + f"; {stream.steps_per_epoch * d.epochs} steps of {d.batch_pairs} pairs; {device}"
        + (f" {autocast} autocast" if autocast else " float32") + f"; run folder {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(d.seed + ranks.rank)
    model = model_sources.load_model(init, torch.float32, device)
    hp = trainer.Hyper(lr=settings["lr"], epochs=d.epochs, batch_pairs=d.batch_pairs, token_budget=d.token_budget,
                       warmup=d.warmup, schedule=d.schedule, weight_decay=d.weight_decay,
                       max_grad_norm=d.max_grad_norm, save_every=d.save_every,
                       gradient_checkpointing=d.gradient_checkpointing, autocast=autocast)
    obj = Settings(loss, alpha=d.alpha, gamma=d.gamma, advantage=d.advantage, beta=d.beta)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    resumed = resume and bool(checkpoints.complete(run_dir))
    summary = trainer.train(model, stream, obj, hp, ranks, run_dir, key, resume, pad, vocab, say)
    summary["dropped_in_stage_one"] = dropped
    if ranks.rank == 0:
        out = run_dir / "model"
        shutil.rmtree(out, ignore_errors=True)
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        metrics = run_report.read_metrics(run_dir / "metrics.jsonl")
        run_report.plot_loss(metrics, f"{recipe.name}: {label}", run_dir / "loss.png")
        (out / "README.md").write_text(run_report.model_card(
            recipe=recipe, loss=label, init_spec=init_spec, settings=settings, caches=needed, summary=summary,
            key=key, command=command or f"adpa distill -r {recipe.name} --loss {label}"))
        publish_folder(store, "student", inputs, lambda folder: (_link_or_copy(out, folder), summary)[1])
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the run is complete and published
    ranks.barrier()
    return Trained(label, key, "resumed" if resumed else "built", store.path(key), run_dir, summary)


def run_distill(recipe: Recipe, store: Store, loss: str | None = None, output: Path | None = None,
                resume: bool = False, caches: dict[str, str] | None = None, say=print,
                ranks: parallel.Ranks | None = None) -> list[Trained]:
    ranks = ranks or parallel.Ranks()
    if ranks.rank > 0:
        say = lambda *_: None  # noqa: E731 - rank 0 speaks for all
    loss = loss or recipe.distill.loss
    runs = Path("runs")
    keys = dict(caches or {})
    if not all(name in keys for name in artifacts_for("adpa" if loss == "adpa+" else loss)):
        keys = planned_caches(recipe, store) | keys
    if loss != "adpa+":
        return [train_one(recipe, store, loss, recipe.models.student, keys, output or runs / f"{recipe.name}-{loss}",
                          resume, say, ranks)]
    first = train_one(recipe, store, "dckd", recipe.models.student, keys, runs / f"{recipe.name}-dckd", resume, say,
                      ranks)
    second_recipe = copy.deepcopy(recipe)
    second_recipe.models.student = str(first.model_dir)
    from stages.teacher_cache import run_states
    say(f"adpa+: ADPA states from the DCKD student {first.key}")
    states = run_states(second_recipe, store, say, ranks)
    keys2 = keys | {"advantage": states[-1].key}
    second = train_one(second_recipe, store, "adpa", str(first.model_dir), keys2,
                       output or runs / f"{recipe.name}-adpa+", resume, say, ranks, label="adpa+")
    return [first, second]


def summary_table(results: list[Trained]) -> str:
    lines = [f"{'student':8} {'status':8} {'steps':>6} {'pairs':>6} {'tokens':>9} {'tok/s':>8} {'wait':>6} "
             f"{'final loss':>10}  key / folder"]
    for r in results:
        s = r.summary
        lines.append(f"{r.loss:8} {r.status:8} {s.get('steps', '-'):>6} {s.get('pairs_per_epoch', '-'):>6} "
                     f"{s.get('tokens_this_run', '-'):>9} {s.get('tokens_per_s', '-'):>8} "
                     f"{s.get('data_wait_fraction', '-'):>6} {s.get('final', {}).get('loss', float('nan')):>10.4f}  "
                     f"{r.key}\n{'':8} model: {r.model_dir}  run: {r.run_dir}")
    return "\n".join(lines)
