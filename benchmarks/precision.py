"""`python -m benchmarks.precision`: how far bf16 autocast (the GPU default) moves each loss and its gradient.

The same micro-batch of teacher-like pairs (from `benchmarks.distill`'s caches) through a randomly
initialised student of the chosen shape, once in float32 and once under bf16 autocast; prints the
relative difference of the loss and the cosine similarity of the full gradient, per loss.
"""

from __future__ import annotations

import argparse
import json

from benchmarks.distill import OUT, SHAPES, build_caches, make_model


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", default="cpu-51m", choices=sorted(SHAPES))
    ap.add_argument("--pairs", type=int, default=8)
    a = ap.parse_args()
    import torch

    from adpa.artifacts import Store
    from adpa.stages.common.lm import OutputLayer
    from adpa.stages.distill.losses import caches_of
    from adpa.stages.distill.objective import collate, micro_loss
    from adpa.stages.distill.pair_stream import PairStream
    from adpa.stages.distill.settings import Distill
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dirs = build_caches(Store(OUT / "distill-store"), a.pairs, SHAPES[a.shape][0], 48, (96, 192))
    model = make_model(a.shape, device)
    out = OutputLayer(model, SHAPES[a.shape][0])
    rows = []
    for loss in ("sft", "kd", "dckd", "adpa", "dpo"):
        stream = PairStream({n: dirs[n] for n in caches_of(loss)}, loss, 0, 64, a.pairs)
        _, pairs = next(stream.steps(1))
        mb = collate(pairs, loss, 0).to(device)
        res = {}
        for name, ctx in (("fp32", torch.autocast(device, enabled=False)),
                          ("bf16", torch.autocast(device, dtype=torch.bfloat16))):
            model.zero_grad(set_to_none=True)
            with ctx:
                value, _ = micro_loss(model, out, mb, loss, Distill())
            value.backward()
            res[name] = (value.item(), torch.cat([p.grad.flatten().float() for p in model.parameters()]))
        (v32, g32), (v16, g16) = res["fp32"], res["bf16"]
        rows.append({"loss": loss, "fp32": v32, "bf16": v16, "rel_diff": abs(v16 - v32) / max(abs(v32), 1e-12),
                     "grad_cosine": torch.nn.functional.cosine_similarity(g32, g16, dim=0).item()})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{a.shape} on {device}: {'loss':5} {'fp32':>10} {'bf16':>10} {'rel diff':>9} {'grad cos':>9}")
    for r in rows:
        print(f"{'':>{len(a.shape) + len(device) + 5}}{r['loss']:5} {r['fp32']:>10.5f} {r['bf16']:>10.5f} "
              f"{r['rel_diff']:>9.2e} {r['grad_cosine']:>9.5f}")


if __name__ == "__main__":
    main()
