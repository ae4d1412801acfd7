"""The built-in worlds (`pipeline.builtin` resolves their names): models and data this project builds itself.

* `tiny.py` (docs/TINY_WORLD.md): the `World` of a sorting task with a ground-truth reward, its
  tokenizer, data, teachers and SFT students, trained by our own stages; v3 (`sorting_task.py`);
* `tiny4.py` (docs/PREREG-v4.md): world v4 (`flawed_sorting.py`), two student sizes and a
  Bradley-Terry reward model (`reward_model.py`) for selection without the ground truth;
* `smollm2.py`: the real SmolLM2-135M-Instruct shipped on PyPI and cut-down copies of it;
* `tiny_pairs.py`: small multi-turn arithmetic preference pairs.

Kept free of imports: a world module imports its siblings, never this package's names.
"""
