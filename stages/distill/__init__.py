"""Stage two: a student trained from stage one's artifacts; no teacher in memory.

`distiller.py` is the run (`Distiller`: check, setup, step, validate, train, publish), `caches.py` the
checks that refuse a cache, `pair_stream.py` joins and shuffles the artifacts' rows into pairs,
`objective.py` turns a micro-batch into a loss, `losses.py` holds the losses and their declarations
(`LOSSES`), `training.py` the parts of a step (schedule, divergence stops, sums over ranks, selection),
`checkpoints.py` resumable state, `sharding.py` FSDP, `lora.py` adapters, `run_log.py` metrics.jsonl and
its mirrors, `report.py` the model card and loss plot, `settings.py` the `distill:` recipe section.
Kept free of imports so that reading settings does not load torch.
"""
