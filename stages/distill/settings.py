"""Stage two's settings: the `distill:` recipe section. Defaults are the paper's (DCKD/ADPA: lr 5e-7,
1 epoch, cosine with 10% warm-up, effective batch 128, AdamW); loss `sft` uses `sft_lr` (the paper's
SFT stages: 2e-5)."""

from __future__ import annotations

from dataclasses import dataclass

from adpa.stages.common.settings import setting


SELECT_BY = ("last", "rm", "reward", "implicit_reward", "implicit_reward_per_token", "preference_accuracy",
             "chosen_nll")
LOWER_IS_BETTER = ("chosen_nll", "kl_to_init")


REPORT_TO = ("tensorboard", "wandb")


@dataclass
class Lora:
    """`distill.lora`: train low-rank adapters (PEFT LoRA) instead of every weight."""
    r: int = setting(16, "rank of each adapter", minimum=1)
    alpha: float = setting(32.0, "scale: the adapter's update is multiplied by alpha / r", minimum=0)
    dropout: float = setting(0.05, "dropout on the adapter's input", minimum=0, below=1)
    target_modules: tuple[str, ...] = setting(("all-linear",), "modules that get an adapter: all-linear (every "
                                              "linear layer but the output layer) or names such as q_proj, v_proj")


def _losses() -> tuple:
    from adpa.stages.distill.losses import LOSSES  # torch: read when a recipe is checked, not when --help is shown
    return tuple(LOSSES)


def _divergences() -> tuple:
    from adpa.stages.distill.losses import DIVERGENCES
    return tuple(DIVERGENCES)


@dataclass
class Distill:
    loss: str = setting("dckd", "the objective (adpa+: dckd, then adpa on the dckd student's own states)",
                        choices=_losses)
    lr: float = setting(5e-7, "peak learning rate", minimum=0)
    sft_lr: float = setting(2e-5, "peak learning rate of loss sft", minimum=0)
    epochs: int = setting(1, "passes over the pairs", minimum=1)
    batch_pairs: int = setting(128, "effective batch in preference pairs, over all processes and micro-batches",
                               minimum=1)
    token_budget: int = setting(8192, "tokens in a micro-batch's rows (padding included) per process", minimum=1,
                                in_key=False)
    pack: bool = setting(True, "a pair's prompt computed once, its chosen, rejected and state responses as branches "
                         "of one row (a tree-shaped attention mask), several pairs per row: equal to running each "
                         "alone within float rounding (false: each alone, right-padded; the worlds' registered "
                         "runs)", in_key=False)
    warmup: float = setting(0.1, "warm-up as a fraction of the optimizer steps", minimum=0, below=1)
    schedule: str = setting("cosine", "learning-rate schedule after warm-up", choices=("cosine", "linear", "constant"))
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0)
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0: none)", minimum=0)
    alpha: float = setting(0.1, "dckd: weight of each KL term", minimum=0)
    divergence: str = setting("forward_kl", "kd and dckd: the divergence to the teacher over its top-k ids and the "
                              "tail bin (forward_kl: the paper's; reverse_kl; jsd: generalised JSD(jsd_beta); tv: "
                              "total variation)", choices=_divergences)
    jsd_beta: float = setting(0.5, "divergence jsd: its beta (m = beta p + (1 - beta) q; 0.01 to 0.99)", minimum=0.01,
                              below=0.995)
    temperature: float = setting(1.0, "kd and dckd: the student's temperature in the divergence, q_T = softmax(z / T) "
                                 "(the SFT term stays at 1; the stored teacher cannot be re-tempered; at least 0.05)",
                                 minimum=0.05)
    cross_tokenizer: bool = setting(False, "train a student of another tokenizer than the cache's: each response is "
                                    "re-tokenized by the student, aligned to the teacher's tokens by byte spans, "
                                    "and the divergence is taken over the teacher's entries that match the "
                                    "student's vocabulary (exactly, or along the teacher's path) plus a rest bin; "
                                    "adpa: the advantage on those entries (sft, kd, dckd, adpa; the cache rendered "
                                    "with the student's chat template)")
    uld_weight: float = setting(1.0, "kd and dckd with cross_tokenizer: weight of the ULD term (sorted "
                                "probabilities of the unmatched entries compared rank by rank)", minimum=0)
    gamma: float = setting(1.5, "adpa: weight of the expected advantage", minimum=0)
    advantage: str = setting("signed", "adpa: the advantage as the paper has it (signed), clipped to [0, 1] as the "
                             "released code optimises it (clip01), or -A, a diagnostic (flipped)",
                             choices=("signed", "clip01", "flipped"))
    beta: float = setting(0.1, "dpo: beta", minimum=0)
    seed: int = setting(0, "data order and initialisation seed")
    shuffle_buffer: int = setting(1024, "pairs held by the seeded streaming shuffle", minimum=1)
    save_every: int = setting(0, "checkpoint every N optimizer steps (0: only at the end); --resume continues",
                              minimum=0, in_key=False)
    compile: bool = setting(False, "torch.compile the student's transformer, forward and backward, with dynamic "
                            "shapes (equal within float rounding; the first steps pay the compilation; the output "
                            "layer and the loss's arithmetic stay eager)", in_key=False)
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass (less memory)",
                                           in_key=False)
    dtype: str = setting("auto", "auto: bfloat16 autocast on CUDA, float32 on CPU",
                         choices=("auto", "float32", "bfloat16"))
    eval_every: int = setting(0, "validate on data.valid_source every N optimizer steps, at the start and at the "
                              "end (0: never)", minimum=0)
    lora: Lora | None = setting(None, "LoRA adapters instead of full fine-tuning (null: full; --set "
                                "distill.lora.r=16 turns them on); the student is the merged model, the adapter "
                                "is published beside it")
    fsdp: bool = setting(False, "shard parameters, gradients and optimizer state over the torchrun processes "
                         "(PyTorch FSDP2), for students larger than one GPU", in_key=False)
    report_to: tuple[str, ...] = setting((), "where the run's scalars go besides metrics.jsonl: tensorboard (event "
                                         "files in the run folder), wandb (WANDB_MODE=offline works)",
                                         choices=REPORT_TO, in_key=False)
    select_by: str = setting("last", "which state becomes the student: the last, or the best on the validation "
                             "pairs by this metric (rm: models.reward_model's score of the greedy answers; reward: "
                             "data.reward, a built-in ground truth; chosen_nll: lower is better)", choices=SELECT_BY)
