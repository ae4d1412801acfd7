"""`make gpu-check`: stage one and stage two in bf16 on a CUDA card, against its limits, in under 5 minutes.

For each realistic shape with random weights (no hub): Danube3-500M and a 1.5B Llama, both with a
32,000-token vocabulary (`benchmarks.distill.SHAPES`):

* stage one: the transformers backend's scorer (`HFScorer`, what `backend: hf` runs) computing
  top-k 50, tail and realized log-probs in bf16 over prompt-heavy pairs (a prompt of 512 tokens,
  two responses of 256), prompts shared; against the limit, the forward over unique tokens
  (each prompt once, each response once, the output layer at scored positions only). Model FLOPs
  utilisation = 2 x parameters x unique tokens/s / the card's dense bf16 peak;
* stage two: the trainer's adpa step (bf16 autocast, AdamW) on caches written through the store, on
  packed rows (each pair's prompt once; `distill.pack`), with `--compile` also compiled
  (`distill.compile`); step MFU = 6 x parameters x unique tokens/s / the peak (padding not counted).

Every measurement runs twice and the second is reported (the first meets each shape cold).
`--device cpu` is a smoke mode (a tiny shape, a few pairs) that the tests run; CPU figures mean
nothing and no MFU is printed without a peak. Figures go to bench-out/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path("bench-out")
PEAK_BF16_TFLOPS = {  # dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets
    "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0, "H800": 989.0,
    "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
    "RTX 4090": 165.0, "B200": 2250.0,
}


def peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak by the longest table name found in the device name."""
    hits = [k for k in PEAK_BF16_TFLOPS if k.lower() in name.lower()]
    return PEAK_BF16_TFLOPS[max(hits, key=len)] if hits else None


def random_model(shape: str, device: str, dtype):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from benchmarks.distill import SHAPES
    vocab, hidden, layers, heads, kv, inter = SHAPES[shape]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, tie_word_embeddings=True,
                      max_position_embeddings=4096)
    with torch.device(device):  # initialised where it runs: a 1.5B init on the host takes a minute
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


def sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def stage_one(model, device: str, pairs: int, prompt: int, response: int, token_budget: int) -> dict:
    import torch

    from adpa.stages.common.lm import HFScorer, OutputLayer, Sequence, base_model, pack_by_prompt, token_budget_batches
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    seqs = []
    for _ in range(pairs):
        p = torch.randint(0, vocab, (prompt,), generator=g).tolist()
        seqs += [Sequence(p + torch.randint(0, vocab, (response,), generator=g).tolist(), prompt) for _ in range(2)]
    scored = sum(s.n for s in seqs)
    rows = pack_by_prompt(seqs)
    unique = sum(len(r.ids) for r in rows)
    scorer = HFScorer(model, vocab, 0, token_budget)
    base, head = base_model(model), OutputLayer(model, vocab)

    def limit():  # plain causal rows of the unique tokens, the head at the scored positions only
        with torch.inference_mode():
            for batch in token_budget_batches([len(r.ids) for r in rows], token_budget):
                ids = torch.tensor([rows[b].ids for b in batch], device=device)  # equal lengths: no padding
                h = base(input_ids=ids).last_hidden_state
                head(h[:, prompt - 1:-1].reshape(-1, h.shape[-1]))

    def timed(fn):
        best = None
        for _ in range(2):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = time.perf_counter() - t0
        return best

    lim = timed(limit)
    e2e = timed(lambda: scorer.score(seqs, k=50))
    return {"pairs": pairs, "prompt": prompt, "response": response, "scored_tokens": scored, "unique_tokens": unique,
            "limit_s": lim, "end_to_end_s": e2e, "scored_tokens_per_s": scored / e2e,
            "limit_scored_tokens_per_s": scored / lim, "ratio_vs_unique_forward": lim / e2e,
            "unique_tokens_per_s": unique / e2e}


def stage_two(model, shape: str, device: str, pairs: int, prompt: int, response: tuple[int, int],
              batch_pairs: int, compile: bool = False) -> dict:
    import torch

    from adpa.artifacts import Store
    from benchmarks.distill import SHAPES, Run, build_caches, train_run
    model = model.float().train()  # fp32 master weights under bf16 autocast, as the trainer runs on GPUs
    dirs = build_caches(Store(OUT / "gpu-check-store"), pairs, SHAPES[shape][0], prompt, response)
    autocast = "bfloat16" if device.startswith("cuda") else None
    runs = [train_run("adpa", dirs, model, OUT / f"gpu-check-{shape}", Run(batch_pairs, 16384, autocast, compile=compile))
            for _ in range(2)]  # packed rows (the default): forward tokens are the unique tokens
    r = runs[-1]
    out = {"pairs": pairs, "batch_pairs": batch_pairs, "steps_timed": r["steps_timed"], "forward_tokens": r["forward_tokens"],
           "step_seconds": r["seconds"], "forward_tokens_per_s": r["forward_tokens"] / r["seconds"],
           "padding_fraction": r["padding_fraction"],
           "peak_gpu_mb": r["peak_gpu_mb"]}
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke run of the same code)")
    ap.add_argument("--shapes", nargs="*", default=None, help="default: danube3-500m llama-1.5b (cpu: smoke)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak when not in the table")
    ap.add_argument("--compile", action="store_true", help="stage two also with distill.compile (reported beside)")
    a = ap.parse_args()
    import torch
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --device cpu for the smoke run)")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = a.peak_tflops or (peak_tflops(name) if cuda else None)
    shapes = a.shapes or (["danube3-500m", "llama-1.5b"] if cuda else ["smoke"])
    one = dict(pairs=256, prompt=512, response=256, token_budget=16384) if cuda else \
        dict(pairs=4, prompt=24, response=12, token_budget=256)
    two = dict(pairs=48, prompt=256, response=(128, 256), batch_pairs=8) if cuda else \
        dict(pairs=4, prompt=16, response=(8, 12), batch_pairs=2)
    dtype = torch.bfloat16 if cuda else torch.float32
    print(f"device: {name}; dense bf16 peak: {f'{peak:,.0f} TFLOP/s' if peak else 'unknown (--peak-tflops)'}; "
          f"torch {torch.__version__}", flush=True)
    report = {"device": name, "peak_bf16_tflops": peak, "torch": torch.__version__, "shapes": {}}
    for shape in shapes:
        t0 = time.perf_counter()
        model = random_model(shape, a.device, dtype)
        params = sum(p.numel() for p in model.parameters())
        s1 = stage_one(model, a.device, **one)
        s2 = stage_two(model, shape, a.device, **two)
        s2c = stage_two(model, shape, a.device, **two, compile=True) if a.compile else None
        for s, flops in ((s1, 2), (s2, 6), (s2c, 6)):
            if peak and s:
                s["mfu"] = flops * params * s["unique_tokens_per_s" if s is s1 else "forward_tokens_per_s"] / (peak * 1e12)
        report["shapes"][shape] = {"parameters": params, "stage_one": s1, "stage_two": s2, "stage_two_compiled": s2c,
                                   "seconds": time.perf_counter() - t0}
        mfu = lambda s: f", MFU {s['mfu']:.1%}" if "mfu" in s else ""  # noqa: E731
        print(f"{shape} ({params / 1e6:,.0f}M parameters, {'bf16' if cuda else 'float32'}):\n"
              f"  stage one: {s1['scored_tokens_per_s']:,.0f} scored tokens/s = {s1['ratio_vs_unique_forward']:.2f}x the "
              f"unique-token limit ({s1['limit_scored_tokens_per_s']:,.0f}){mfu(s1)}\n"
              f"  stage two: adpa step {s2['forward_tokens_per_s']:,.0f} unique tokens/s{mfu(s2)}, padding "
              f"{s2['padding_fraction']:.1%}, peak {s2['peak_gpu_mb']} MB"
              + (f"; compiled {s2c['forward_tokens_per_s']:,.0f} unique tokens/s{mfu(s2c)}" if s2c else ""), flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(f"written {OUT / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
