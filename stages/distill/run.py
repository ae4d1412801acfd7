"""Stage two: train a student on stage one's artifacts; the student becomes an artifact too.

For a loss and the keys of the artifacts it reads: refuse any cache that cannot serve this student
(one line naming the cache), train, and save the student with `save_pretrained`, its tokenizer and
chat template, a model card, metrics.jsonl and loss.png in the run folder. The student is then
published in the store under a key of everything that went into it (init model, loss, the settings
that loss uses, cache keys): the same run asked again is reused, not retrained. A LoRA student
(`distill.lora`) is published merged; its adapter is an `adapter-` artifact of the same inputs,
named in the student's stats, and `adapter/` in the run folder.

Which keys a recipe's stage one produced, and chains such as ADPA+ (DCKD, then ADPA on states the
DCKD student generated), are the pipeline's business: this stage never imports stage one.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from artifacts import Store
from artifacts.folders import publish_folder
from artifacts.fsutil import copy_file, exclusive_folder
from artifacts.reader import ArtifactReader
from artifacts.signing import SIGNATURES
from artifacts.store import MANIFEST, StoreError
from artifacts.transfer import local_copy
from artifacts.writer import checked_for_reuse
from schemas import files
from schemas.keys import artifact_key
from schemas.manifest import ManifestError
from stages.common.device import compute_dtype, pad_id, pick_device
from stages.common.lm import OutputLayer
from stages.common.models import ResolvedModel, load_model, load_tokenizer
from stages.common.ranks import Ranks
from stages.common.run_folder import claim
from stages.common.settings import in_key, plain
from stages.common.tokenizers import tokenizer_fingerprint
from stages.distill import checkpoints, lora, report, sharding, trainer
from stages.distill.losses import LOSSES, caches_of
from stages.distill.pair_stream import PairStream
from stages.distill.run_log import METRICS, WANDB_ID, read_records
from stages.distill.settings import Distill

# cache name -> the artifact kind it is; columns a loss may need -> (layout flag, column name)
CACHE_KINDS = {"teacher_topk": "teacher-topk", "advantage": "advantage", "student_logp": "seq-logp"}
COLUMNS = {"ref_topk": ("with_ref", "ref_topk_logp"), "realized_logp": ("with_logp", "realized_logp")}


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


def check_caches(dirs: dict[str, Path], loss: str, tok, init_identity: dict) -> int:
    """Refuse caches that cannot train this student with this loss; returns the shared vocabulary size."""
    fp = tokenizer_fingerprint(tok)
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
        if made.get("vocab_sha256") != fp["vocab_sha256"] or reader.layout.vocab_size != fp["vocab_size"]:
            raise CacheRefused(f"cache {key} was made with another vocabulary ({reader.layout.vocab_size} ids, sha256 "
                               f"{str(made.get('vocab_sha256'))[:12]}) than the student's ({fp['vocab_size']} ids, "
                               f"sha256 {fp['vocab_sha256'][:12]})")
        if render.get("template_from") == "student" and made.get("chat_template_sha256") != fp["chat_template_sha256"]:
            raise CacheRefused(f"cache {key} was rendered with another chat template than the student's "
                               f"(sha256 {str(made.get('chat_template_sha256'))[:12]} vs {fp['chat_template_sha256'][:12]})")
        if "realized_logp" in columns and m["inputs"].get("model") != init_identity:
            raise CacheRefused(f"cache {key} holds log-probs of {m['inputs'].get('model')}, not of the student's "
                               f"init model {init_identity} (the reference of {loss})")
        vocab = reader.layout.vocab_size
    return vocab


def key_settings(d: Distill, loss: str) -> dict:
    """The settings that enter a student's key: those that change what is learned, and of the per-loss
    coefficients only the ones this loss uses; `lr` is the loss's own peak learning rate."""
    spec = LOSSES[loss]
    per_loss = {u for s in LOSSES.values() for u in s.uses}
    lrs = {s.lr for s in LOSSES.values()}
    out = {n: plain(getattr(d, n)) for n in in_key(Distill)
           if n != "loss" and n not in lrs and (n not in per_loss or n in spec.uses)}
    if out["lora"] is None:  # full fine-tuning: keys as before LoRA existed
        del out["lora"]
    return out | {"lr": getattr(d, spec.lr)}


def _copy_files(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Copies (reflinks where the file system has them), never hard links: a user who saves a model over its
    run folder must not change the store's artifact."""
    for p in sorted(q for q in src.iterdir() if q.name not in skip):
        copy_file(p, dst / p.name)


RUN_OUTPUTS = ("model", "adapter", "checkpoints", METRICS, "loss.png", "tensorboard", "wandb", WANDB_ID)


def train_one(store: Store, loss: str, init: ResolvedModel, settings: Distill, caches: dict[str, str], run_dir: Path,
              resume: bool = False, say=print, ranks: Ranks | None = None, label: str | None = None,
              title: str = "", command: str = "", validate=None, overwrite: bool = False) -> Trained:
    """One training run: `loss` is what the objective computes (a loss of `LOSSES` that is not a chain),
    `label` what the run is called (adpa+ trains its second step as adpa), `caches` name -> artifact key.
    `validate`: a callable model -> {metric: mean} with an `identity` (what it measures on), needed when
    `settings.eval_every` > 0."""
    import torch

    ranks = ranks or Ranks()
    label = label or loss
    d = settings
    missing = [name for name in caches_of(loss) if name not in caches]
    if missing:
        raise CacheRefused(f"loss {loss} reads {', '.join(missing)}, and no artifact was named for it")
    needed = {name: caches[name] for name in caches_of(loss)}
    dirs = {}
    for name, key in needed.items():
        if store.manifest(key) is None:
            raise CacheRefused(f"cache {key} ({name}) is not complete in store {store}: run stage one "
                               f"(adpa teacher-cache) for this recipe, or pull the artifact (adpa cache pull URL)")
        dirs[name] = store.location(key)
    tok = load_tokenizer(init)
    vocab = check_caches(dirs, loss, tok, init.identity)

    device = pick_device(ranks.local_rank)
    precision = compute_dtype(d.dtype, device)
    autocast = precision if precision != "float32" else None
    settings_in_key = key_settings(d, loss)
    if bool(d.eval_every) != (validate is not None):
        raise ValueError("distill.eval_every > 0 needs validation pairs (data.valid_source), and only then")
    if d.select_by != "last" and not d.eval_every:
        raise ValueError(f"distill.select_by {d.select_by} needs distill.eval_every > 0 (when to validate)")
    sharded = d.fsdp and ranks.world_size > 1  # one process: nothing to shard over
    if sharded and (d.eval_every or d.lora):
        raise ValueError("distill.fsdp trains without distill.eval_every and distill.lora for now (validation and "
                         "adapters on a sharded student are not built); set them to 0 / null")
    inputs = {"init": init.identity, "loss": label, "caches": needed, "settings": settings_in_key,
              "precision": precision} | ({"validation": validate.identity} if validate is not None else {})
    key = artifact_key("student", inputs, {"name": files.NAME, "version": files.VERSION})
    run_dir = Path(run_dir)
    if ranks.rank == 0:  # before the lock file is written into it
        claim(run_dir, key, RUN_OUTPUTS, overwrite, check_only=True)
    # One run per folder: a second `adpa distill` into it refuses at once (its metrics, checkpoints
    # and model would interleave with the first's). Rank 0 holds it for the whole launch.
    with exclusive_folder(run_dir, "run folder") if ranks.rank == 0 else contextlib.nullcontext():
        if ranks.rank == 0:
            claim(run_dir, key, RUN_OUTPUTS, overwrite)
        done = checked_for_reuse(store, key)  # a damaged student is named, never copied onward
        if done is not None:
            say(f"student ({label}): complete artifact {key} reused")
            adapter = done["stats"].get("adapter")
            for sub, src in (("model", key), ("adapter", adapter)):  # the run folder shows the student either way
                if src and ranks.rank == 0 and not (run_dir / sub).exists():
                    if src != key and checked_for_reuse(store, src) is None:
                        raise StoreError(f"student {key} names adapter {src}, which is not complete in {store}")
                    (run_dir / sub).mkdir(parents=True)
                    _copy_files(local_copy(store, src), run_dir / sub, skip=(MANIFEST, SIGNATURES))
            return Trained(label, key, "reused", local_copy(store, key), run_dir, done["stats"])

        stream = PairStream(dirs, loss, d.seed, d.shuffle_buffer, d.batch_pairs)
        dropped = next(iter(ArtifactReader(p).manifest for p in dirs.values()))["dropped"]
        say(f"student ({label}): {init.spec} on {stream.n_pairs} pairs"
            + (f" (stage one dropped {sum(dropped.values())}: {dropped})" if dropped else "")
            + f"; {stream.steps_per_epoch * d.epochs} steps of {d.batch_pairs} pairs; {device}"
            + (f" {autocast} autocast" if autocast else " float32") + f"; run folder {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(d.seed)  # the same model (LoRA's initial adapters included) on every rank
        model = load_model(init, torch.float32, device)
        adapted = lora.attach(model, d.lora) if d.lora else None
        if ranks.world_size > 1:
            torch.manual_seed(d.seed + ranks.rank)  # dropout: each rank its own draws
        root = sharding.shard(model, OutputLayer(model, vocab), loss, d) if sharded else None
        resumed = resume and bool(checkpoints.complete(run_dir))
        summary = trainer.train(model, stream, loss, d, settings_in_key["lr"], autocast, ranks, run_dir, key, resume,
                                pad_id(tok), vocab, say, validate, sharded=root)
        summary["dropped_in_stage_one"] = dropped
        whole = sharding.full_state(root) if root is not None else None  # every rank gathers, rank 0 keeps
        if ranks.rank == 0:
            out = run_dir / "model"
            shutil.rmtree(out, ignore_errors=True)
            if adapted is not None:  # the adapter is an artifact of its own: its folder must not sit in the model's
                shutil.rmtree(run_dir / "adapter", ignore_errors=True)
                model = lora.export(adapted, run_dir / "adapter")
                adapter, _, _ = publish_folder(store, "adapter", inputs, lambda f: _copy_files(run_dir / "adapter", f))
                summary["adapter"] = adapter.name
                say(f"student ({label}): LoRA adapter {adapter.name}, merged into the student")
            model.save_pretrained(out, safe_serialization=True, state_dict=whole)
            tok.save_pretrained(out)
            report.plot_loss(read_records(run_dir / METRICS, say), f"{title}: {label}", run_dir / "loss.png")
            (out / "README.md").write_text(report.model_card(
                title=title, loss=label, init_spec=init.spec, settings=settings_in_key, caches=needed, summary=summary,
                key=key, command=command or f"adpa distill -r {title} --loss {label}"))
            publish_folder(store, "student", inputs, lambda folder: (_copy_files(out, folder), summary)[1])
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the run is complete and published
        ranks.barrier()
        return Trained(label, key, "resumed" if resumed else "built", store.path(key), run_dir, summary)


def summary_table(results: list[Trained]) -> str:
    lines = [f"{'student':8} {'status':8} {'steps':>6} {'pairs':>6} {'tokens':>9} {'tok/s':>8} {'wait':>6} "
             f"{'final loss':>10}  key / folder"]
    for r in results:
        s = r.summary
        cell = lambda name: "-" if s.get(name) is None else str(s[name])  # noqa: E731 (a run resumed at its end: none)
        loss = (s.get("final") or {}).get("loss")
        lines.append(f"{r.loss:8} {r.status:8} {cell('steps'):>6} {cell('pairs_per_epoch'):>6} "
                     f"{cell('tokens_this_run'):>9} {cell('tokens_per_s'):>8} {cell('data_wait_fraction'):>6} "
                     f"{'-' if loss is None else f'{loss:.4f}':>10}  {r.key}\n{'':8} model: {r.model_dir}  "
                     f"run: {r.run_dir}")
    return "\n".join(lines)
