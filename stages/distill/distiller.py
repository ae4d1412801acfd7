"""Stage two as one object: `Distiller(store, job, place).run()` trains a student on stage one's artifacts
and publishes it as an artifact too.

The shape is torchtune's recipe: `check()` (the caches can serve this student; the student's key),
`setup()` (pair stream, model, LoRA / FSDP, optimizer, schedule, resume), `step()` (one optimizer step
over its micro-batches -> the record metrics.jsonl gets), `validate()`, `train()` (the loop) and
`publish()` (`save_pretrained` with tokenizer, chat template, model card, metrics.jsonl and loss.png in the
run folder; the student in the store under a key of everything that went into it: init model, loss, the
settings that loss uses, cache keys). `run()` is all of it, or the reuse of a student already published
under the same key. A LoRA student (`distill.lora`) is published merged; its adapter is an `adapter-`
artifact of the same inputs, named in the student's stats, and `adapter/` in the run folder.

The step. One optimizer step sees `batch_pairs` preference pairs in total. Rank r of W takes pairs r, r + W,
... of the step and packs them into micro-batches of at most `token_budget` tokens in rows (`distill.pack`:
each pair's prompt once, several pairs per row; objective.py). Each micro-batch's
loss (a mean over its pairs) is weighted by its share of the step's pairs, so the accumulated gradient is
the gradient of the mean over all of the step's pairs, whatever the number of processes or micro-batches.
Ranks sum their gradients, then clip, AdamW, and the schedule step. Data are collated on a background thread;
the time the loop waits for them is measured. With `eval_every`, the model is validated at the start, every
`eval_every` steps and at the end, and with `select_by` the best state (not the last) becomes the student.

Which keys a recipe's stage one produced, and chains such as ADPA+ (DCKD, then ADPA on states the DCKD
student generated), are the pipeline's business: this stage never imports stage one.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adpa.artifacts import Store
from adpa.artifacts.folders import publish_folder
from adpa.artifacts.fsutil import copy_file, exclusive_folder
from adpa.artifacts.prefetch import background
from adpa.artifacts.signing import SIGNATURES
from adpa.artifacts.store import MANIFEST, StoreError
from adpa.artifacts.transfer import local_copy
from adpa.artifacts.writer import checked_for_reuse
from adpa.schemas import files
from adpa.schemas.keys import artifact_key
from adpa.stages.common.device import compute_dtype, pad_id, pick_device
from adpa.stages.common.lm import OutputLayer, base_model, takes_tree_mask
from adpa.stages.common.models import ResolvedModel, load_model, load_tokenizer
from adpa.stages.common.progress import Progress
from adpa.stages.common.ranks import Ranks
from adpa.stages.common.run_folder import claim
from adpa.stages.common.settings import in_key, plain
from adpa.stages.distill import checkpoints, lora, report, sharding
from adpa.stages.common.token_bytes import vocab_table
from adpa.stages.distill.caches import check_caches, locate, stage_one_drops, teacher_vocab
from adpa.stages.distill.cross_tokenizer import Bridge, Conversations
from adpa.stages.distill.losses import LOSSES
from adpa.stages.distill.objective import MicroBatch, collate, micro_loss, pack
from adpa.stages.distill.pair_stream import PairStream
from adpa.stages.distill.run_log import METRICS, WANDB_ID, RunLog, Sinks, read_records
from adpa.stages.distill.settings import Distill
from adpa.stages.distill.training import (Selection, all_reduce_grads, lr_multiplier, stop_if_not_finite,
                                     stop_if_weights_not_finite, sum_over_ranks)

# what a step's record holds besides the loss and its terms (then the timings train() adds)
STEP_FIELDS = ("step", "epoch", "lr", "grad_norm", "pairs", "tokens", "forward_tokens", "padded_tokens", "step_s",
               "data_wait_s", "tokens_per_s")
RUN_OUTPUTS = ("model", "adapter", "checkpoints", METRICS, "loss.png", "tensorboard", "wandb", WANDB_ID)


@dataclass(frozen=True)
class Job:
    """What a student is made of; everything here but `label` enters its key.
    `validation`: a callable model -> {metric: mean} with an `identity` (what it measures on), needed
    exactly when `settings.eval_every` > 0."""

    loss: str  # what the objective computes: a loss of `LOSSES` that is not a chain
    init: ResolvedModel
    settings: Distill
    caches: dict[str, str]  # cache name -> artifact key
    label: str = ""  # what the run is called, when not `loss` (adpa+ trains its second step as adpa)
    validation: Callable | None = None
    # caches of another chat template re-rendered from their messages (distill.cross_tokenizer): not in the key,
    # the caches' keys already name the data these come from
    conversations: Conversations | None = None

    @property
    def name(self) -> str:
        return self.label or self.loss


@dataclass(frozen=True)
class Place:
    """Where and how a run happens: none of it changes what is learned. `run_dir` None: a folder under
    `runs` named by the title, the run's name and the student key's first 8 hex digits, so that a run with
    other data or settings (another key) never lands in an earlier run's folder."""

    run_dir: Path | None = None
    resume: bool = False
    overwrite: bool = False  # replace a folder that is not an earlier run of the same key
    title: str = ""  # the recipe's name, in plots and the model card
    command: str = ""  # how to reproduce, for the model card
    ranks: Ranks = field(default_factory=Ranks)
    say: Callable = print
    runs: Path = Path("runs")

    def folder(self, name: str, key: str) -> Path:
        if self.run_dir is not None:
            return Path(self.run_dir)
        return self.runs / f"{self.title + '-' if self.title else ''}{name}-{key.rsplit('-', 1)[1][:8]}"


@dataclass
class Trained:
    loss: str
    key: str
    status: str  # built | resumed | reused
    model_dir: Path  # the student's folder in the store
    run_dir: Path
    summary: dict


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
    # the paper's divergence at T = 1: keys as before the divergence menu existed (jsd_beta only for jsd)
    for name, default in (("divergence", "forward_kl"), ("temperature", 1.0)):
        if out.get(name) == default:
            del out[name]
    if out.get("divergence") != "jsd":
        out.pop("jsd_beta", None)
    if not out.pop("cross_tokenizer"):  # the cache's own tokenizer: keys as before students of others existed
        out.pop("uld_weight", None)
    else:
        out["cross_tokenizer"] = True
    return out | {"lr": getattr(d, spec.lr)}


def _copy_files(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Copies (reflinks where the file system has them), never hard links: a user who saves a model over its
    run folder must not change the store's artifact."""
    for p in sorted(q for q in src.iterdir() if q.name not in skip):
        copy_file(p, dst / p.name)


class Distiller:
    """One student: `run()`, or its parts in order (check, setup, train, publish)."""

    def __init__(self, store: Store, job: Job, place: Place):
        self.store, self.job, self.place = store, job, place
        self.settings = job.settings  # its one name from here to the loss functions
        self.ranks, self.say = place.ranks, place.ranks.speaker(place.say)
        self.run_dir = None if place.run_dir is None else Path(place.run_dir)  # None: named by the key in check()

    # -- what the run is ---------------------------------------------------------------------------
    def check(self) -> str:
        """Refuse what cannot work before anything is loaded or written; returns the student's key."""
        s, job = self.settings, self.job
        self.dirs = locate(self.store, job.loss, job.caches)
        self.tok = load_tokenizer(job.init)
        self.pad = pad_id(self.tok)
        self.vocab = check_caches(self.dirs, job.loss, self.tok, job.init.identity, s.cross_tokenizer,
                                  job.conversations is not None)
        self.bridge = self._bridge() if s.cross_tokenizer else None
        if bool(s.eval_every) != (job.validation is not None):
            raise ValueError("distill.eval_every > 0 needs validation pairs (data.valid_source), and only then")
        if s.select_by != "last" and not s.eval_every:
            raise ValueError(f"distill.select_by {s.select_by} needs distill.eval_every > 0 (when to validate)")
        self.sharded = s.fsdp and self.ranks.world_size > 1  # one process: nothing to shard over
        if self.sharded and (s.eval_every or s.lora):
            raise ValueError("distill.fsdp trains without distill.eval_every and distill.lora for now (validation "
                             "and adapters on a sharded student are not built); set them to 0 / null")
        device = pick_device(self.ranks.local_rank)
        self.device = torch.device(device)
        precision = compute_dtype(s.dtype, device)
        self.autocast = precision if precision != "float32" else None
        self.key_settings = key_settings(s, job.loss)
        self.inputs = {"init": job.init.identity, "loss": job.loss, "caches": {n: job.caches[n] for n in self.dirs},
                       "settings": self.key_settings, "precision": precision} | (
            {"validation": job.validation.identity} if job.validation is not None else {})
        self.key = artifact_key("student", self.inputs, {"name": files.NAME, "version": files.VERSION})
        self.run_dir = self.place.folder(job.name, self.key)
        return self.key

    def _bridge(self) -> Bridge:
        """The teacher's vocabulary table (stored beside its caches) and the student's, for cross_tokenizer."""
        teacher, k = teacher_vocab(self.store, self.dirs)
        student = vocab_table(self.tok)
        both = sum(t == s for t, s in zip(teacher.pieces, student.pieces))
        self.say(f"cross_tokenizer: teacher vocabulary {len(teacher):,} ids, student's {len(student):,}; "
                 f"{both:,} ids spell the same bytes")
        return Bridge(teacher, student, self.tok, k, self.job.conversations)

    def run(self) -> Trained:
        """Reuse the student of this key, or train and publish it."""
        self.check()
        rank0 = self.ranks.rank == 0
        if rank0:  # before the lock file is written into it
            claim(self.run_dir, self.key, RUN_OUTPUTS, self.place.overwrite, check_only=True)
        # One run per folder: a second `adpa distill` into it refuses at once (its metrics, checkpoints
        # and model would interleave with the first's). Rank 0 holds it for the whole launch.
        with exclusive_folder(self.run_dir, "run folder") if rank0 else contextlib.nullcontext():
            if rank0:
                claim(self.run_dir, self.key, RUN_OUTPUTS, self.place.overwrite)
            reused = self.reused()
            if reused is not None:
                return reused
            self.setup()
            resumed = self.start > 0
            summary = self.train()
            self.publish(summary)
            return Trained(self.job.name, self.key, "resumed" if resumed else "built", self.store.path(self.key),
                           self.run_dir, summary)

    def reused(self) -> Trained | None:
        """The student of this key when the store has it complete (a damaged one is named, never copied
        onward); the run folder shows it either way."""
        done = checked_for_reuse(self.store, self.key)
        if done is None:
            return None
        self.say(f"student ({self.job.name}): complete artifact {self.key} reused")
        adapter = done["stats"].get("adapter")
        for sub, src in (("model", self.key), ("adapter", adapter)):
            if src and self.ranks.rank == 0 and not (self.run_dir / sub).exists():
                if src != self.key and checked_for_reuse(self.store, src) is None:
                    raise StoreError(f"student {self.key} names adapter {src}, which is not complete in {self.store}")
                (self.run_dir / sub).mkdir(parents=True)
                _copy_files(local_copy(self.store, src), self.run_dir / sub, skip=(MANIFEST, SIGNATURES))
        return Trained(self.job.name, self.key, "reused", local_copy(self.store, self.key), self.run_dir, done["stats"])

    # -- the parts of a run --------------------------------------------------------------------------
    def load_student(self):
        """The init model in float32 on this process's device (a benchmark hands in its own)."""
        return load_model(self.job.init, torch.float32, self.device)

    def setup(self) -> None:
        """Pair stream, model (LoRA, FSDP), optimizer, schedule; a checkpoint's state when resuming."""
        s, job = self.settings, self.job
        self.stream = PairStream(self.dirs, job.loss, s.seed, s.shuffle_buffer, s.batch_pairs)
        self.total = self.stream.steps_per_epoch * s.epochs
        dropped = stage_one_drops(self.dirs)
        self.say(f"student ({job.name}): {job.init.spec} on {self.stream.n_pairs} pairs"
                 + (f" (stage one dropped {sum(dropped.values())}: {dropped})" if dropped else "")
                 + f"; {self.total} steps of {s.batch_pairs} pairs; {self.device}"
                 + (f" {self.autocast} autocast" if self.autocast else " float32") + f"; run folder {self.run_dir}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(s.seed)  # the same model (LoRA's initial adapters included) on every rank
        self.model = model = self.load_student()
        self.adapted = lora.attach(model, s.lora) if s.lora else None
        if self.ranks.world_size > 1:
            torch.manual_seed(s.seed + self.ranks.rank)  # dropout: each rank its own draws
        if s.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if s.compile:  # dynamic: every micro-batch has its own shape
            base_model(model).compile(dynamic=True)
        self.packed = s.pack and takes_tree_mask(model)
        if s.pack and not self.packed:
            self.say(f"distill.pack: this student's attention ({model.config._attn_implementation}, sliding window "
                     f"{getattr(model.config, 'sliding_window', None)}) takes no tree mask; its pairs run unpacked")
        out = OutputLayer(model, self.vocab)
        self.root = sharding.shard(model, out, job.loss, s) if self.sharded else None
        self.compute = self.root or (lambda mb: micro_loss(model, out, mb, job.loss, s))
        self.params = [p for p in (self.root or model).parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.key_settings["lr"], weight_decay=s.weight_decay)
        warmup_steps = max(1, round(s.warmup * self.total)) if s.warmup > 0 else 0
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_multiplier(s.schedule, self.total, warmup_steps))
        self.trainee = checkpoints.Trainee(self.key, model, self.opt, self.sched, self.ranks, self.root)
        self._resume()

    def _resume(self) -> None:
        found = checkpoints.complete(self.run_dir)
        if found and not self.place.resume:
            raise ValueError(f"{self.run_dir} holds checkpoints ({found[-1].name}); pass --resume to continue that "
                             f"run or choose another --output")
        self.start, extra = 0, None
        if found:
            restored = checkpoints.load(found[-1], self.trainee)
            self.start, extra = restored["step"], restored["extra"]
            self.say(f"resuming from {found[-1]} (step {self.start} of {self.total})")
        self.selection = Selection.from_extra(self.settings.select_by, extra)

    def _batches(self):
        """(step, the step's pair count, this rank's collated micro-batches, a spare) from `start` on. The spare
        (FSDP only) is a micro-batch for the zero-weighted forwards of a rank with fewer than the busiest."""
        loss, pad, r = self.job.loss, self.pad, self.ranks
        for step, pairs in self.stream.steps(self.settings.epochs, self.start):
            own = self._student_ids(pairs[r.rank::r.world_size])
            mine = pack(own, loss, self.settings.token_budget, self.packed)
            micro = [collate(m, loss, pad, self.packed) for m in mine]
            spare = (micro or [collate(self._student_ids(pairs[:1]), loss, pad, self.packed)])[0] if self.root else None
            yield step, len(pairs), micro, spare

    def _student_ids(self, pairs: list) -> list:
        """The pairs in the student's ids: as cached, or re-tokenized and aligned (cross_tokenizer)."""
        return [self.bridge.example(ex) for ex in pairs] if self.bridge else pairs

    def step(self, step: int, micro: list[MicroBatch], n_step: int, spare: MicroBatch | None = None) -> dict:
        """One optimizer step over this rank's micro-batches of a step of `n_step` pairs -> its record."""
        s, ranks = self.settings, self.ranks
        sums, counts = defaultdict(float), [0, 0, 0, 0]  # scored tokens, forward tokens, padded tokens, pairs
        # sharded: every rank runs as many forwards as the busiest one (zero-weighted spares), and FSDP's
        # average over ranks becomes the sum the weights below are made for
        scale = ranks.world_size if self.root else 1
        n_micro = sharding.micro_batch_count(len(micro)) if self.root else len(micro)
        for i in range(n_micro):
            mb = (micro[i] if i < len(micro) else spare).to(self.device)
            with self._autocast():
                value, terms = self.compute(mb)
            (value * (scale * mb.n_pairs / n_step if i < len(micro) else 0.0)).backward()
            if i < len(micro):
                for name, v in terms.items():
                    sums[name] += v * mb.n_pairs
                counts = [c + x for c, x in zip(counts, (mb.tokens, mb.forward_tokens, mb.padded_tokens, mb.n_pairs))]
        for p in self.params:
            if p.grad is None:  # a rank without pairs in this step still joins the sum
                p.grad = torch.zeros_like(p)
        names = sorted(sums)
        reduced = sum_over_ranks([sums[n] for n in names] + counts, ranks)
        if ranks.world_size > 1 and not self.root:
            all_reduce_grads(self.params, ranks)
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm if s.max_grad_norm > 0 else float("inf"))
        gnorm = float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm)  # sharded: a DTensor
        lr = self.sched.get_last_lr()[0]
        stop_if_not_finite(step + 1, dict(zip(names, reduced)) | {"grad_norm": gnorm}, lr, self.run_dir)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # so that the step's time is the step's
        tokens, forward, padded, pairs = (int(x) for x in reduced[-4:])
        return {"step": step + 1, "epoch": step // self.stream.steps_per_epoch, "lr": lr,
                **{n: v / max(pairs, 1) for n, v in zip(names, reduced)}, "grad_norm": gnorm, "pairs": pairs,
                "tokens": tokens, "forward_tokens": forward, "padded_tokens": padded}

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=getattr(torch, self.autocast)) if self.autocast \
            else contextlib.nullcontext()

    def validate(self, step: int) -> None:
        """Measure the model on the validation pairs; the selection keeps its state when it is the best."""
        values = self.job.validation(self.model)
        self.log.write({"step": step, "split": "valid", **values})
        self.selection.offer(step, values, self.model)
        self.say(f"validation at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items())))

    def train(self) -> dict:
        """The optimizer steps from `start` to the end, validation and checkpoints among them; the run's summary."""
        s, total, job = self.settings, self.total, self.job
        validating = bool(s.eval_every and job.validation)
        config = {"loss": job.loss, "key": self.key, "lr": self.key_settings["lr"]} | {
            k: plain(v) for k, v in vars(s).items()}
        bar = Progress(total, f"distill ({job.loss})", "step", self.say, self.start, active=self.ranks.rank == 0)
        totals = defaultdict(float)
        sinks = Sinks(s.report_to, f"{self.run_dir.name} ({job.loss})", config, active=self.ranks.rank == 0)
        with RunLog(self.run_dir, sinks, self.start, self.say) as self.log, bar:  # the bar closes before an error's line
            last = {n: v for n, v in self.log.final.items() if n in ("loss", *LOSSES[job.loss].terms)}  # resumed at the end
            if validating and self.start == 0:
                self.validate(0)
            self.model.train()
            t_start = t_ready = time.perf_counter()
            for step, n_step, micro, spare in background(self._batches(), depth=2, name="adpa-collate"):
                t_got = time.perf_counter()
                rec = self.step(step, micro, n_step, spare)
                t_done = time.perf_counter()
                rec |= {"step_s": round(t_done - t_ready, 4), "data_wait_s": round(t_got - t_ready, 4),
                        "tokens_per_s": round(rec["tokens"] / (t_done - t_ready), 1)}
                for n in ("tokens", "forward_tokens", "padded_tokens", "pairs", "step_s", "data_wait_s",
                          "aligned_share", "matched_mass"):
                    totals[n] += rec.get(n, 0.0)
                self.log.write(rec)
                last = {n: v for n, v in rec.items() if n not in STEP_FIELDS}  # the loss and its terms
                bar.postfix(f"loss {rec['loss']:.4f} {totals['tokens'] / totals['step_s']:,.0f} tok/s")
                bar.update(1)
                if validating and ((step + 1) % s.eval_every == 0 or step + 1 == total):
                    self.validate(step + 1)
                # the last step always: a run killed after it (saving, publishing) resumes with nothing to retrain
                if s.save_every and (step + 1) % s.save_every == 0 or step + 1 == total:
                    checkpoints.save(self.run_dir, step + 1, self.trainee, extra=self.selection.as_extra())
                t_ready = time.perf_counter()
        return self._summary(last, totals, time.perf_counter() - t_start)

    def _summary(self, last: dict, totals: dict, secs: float) -> dict:
        """End of training: never a non-finite weight; the selected state in the model; what the run did."""
        stop_if_weights_not_finite(self.model, self.total, self.ranks)
        sel = self.selection
        selected = {"by": sel.by, "step": self.total}
        if sel.step is not None:
            checkpoints.restore(self.model, sel.state)
            selected = {"by": sel.by, "step": sel.step, "value": sel.value}
            self.say(f"selected the state of step {sel.step} of {self.total} by validation {sel.by} {sel.value:.4f}")
        self.model.eval()
        per_s = totals["step_s"]
        return {"steps": self.total, "steps_this_run": self.total - self.start, "pairs_per_epoch": self.stream.n_pairs,
                "tokens_this_run": int(totals["tokens"]), "seconds": round(secs, 2),
                "tokens_per_s": round(totals["tokens"] / per_s, 1) if per_s else None,
                "data_wait_fraction": round(totals["data_wait_s"] / per_s, 4) if per_s else None,
                "padding_fraction": round(1 - totals["forward_tokens"] / totals["padded_tokens"], 4)
                if totals["padded_tokens"] else None,
                "final": last, "selected": selected, "dropped_in_stage_one": stage_one_drops(self.dirs)} | (
                    {"alignment": {n: round(totals[n] / (self.total - self.start), 4) for n in
                                   ("aligned_share", "matched_mass")}} if self.bridge and self.total > self.start else {})

    def publish(self, summary: dict) -> None:
        """The student (and a LoRA adapter) in the run folder and in the store; checkpoints go once published."""
        whole = sharding.full_state(self.root) if self.root is not None else None  # every rank gathers, rank 0 keeps
        if self.ranks.rank == 0:
            out, model, name = self.run_dir / "model", self.model, self.job.name
            shutil.rmtree(out, ignore_errors=True)
            if self.adapted is not None:  # the adapter is an artifact of its own: its folder must not sit in the model's
                shutil.rmtree(self.run_dir / "adapter", ignore_errors=True)
                model = lora.export(self.adapted, self.run_dir / "adapter")
                adapter, _, _ = publish_folder(self.store, "adapter", self.inputs,
                                               lambda f: _copy_files(self.run_dir / "adapter", f))
                summary["adapter"] = adapter.name
                self.say(f"student ({name}): LoRA adapter {adapter.name}, merged into the student")
            model.save_pretrained(out, safe_serialization=True, state_dict=whole)
            self.tok.save_pretrained(out)
            title = self.place.title
            report.plot_loss(read_records(self.run_dir / METRICS, self.say), f"{title}: {name}", self.run_dir / "loss.png")
            sources = report.provenance([self.store.manifest(self.job.caches[n]) or {} for n in self.dirs])
            card = report.Card(title, name, self.job.init.spec, self.key_settings, self.inputs["caches"], self.key,
                               self.place.command or f"adpa distill -r {title} --loss {name}", sources)
            (out / "README.md").write_text(report.model_card(card, summary))
            publish_folder(self.store, "student", self.inputs, lambda folder: (_copy_files(out, folder), summary)[1])
            shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)  # the run is complete and published
        self.ranks.barrier()


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
