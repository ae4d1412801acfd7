"""Stage two: a student trained from stage one's artifacts; no teacher in memory.

`run.py` checks the caches and publishes the student, `pair_stream.py` joins and shuffles the
artifacts' rows into pairs, `objective.py` turns a micro-batch into a loss, `losses.py` holds the
losses and their declarations (`LOSSES`), `trainer.py` the loop, `checkpoints.py` resumable state,
`report.py` the model card and loss plot, `settings.py` the `distill:` recipe section.
Kept free of imports so that reading settings does not load torch.
"""
