"""Stage one: the DPO teacher and its reference score the preference data once, into store artifacts.

`run.py` produces the artifacts, `pairs.py` reads and checks input rows, `render.py` turns them into
token ids with one chat template, `backends/` holds the engines (transformers, vLLM), `settings.py`
the `data:` and `teacher_cache:` recipe sections.
Kept free of imports so that reading settings does not load torch.
"""
