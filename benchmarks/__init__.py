"""The `make bench-*` scripts (`python -m benchmarks.NAME` from the repository root).

They import the project as installed, `adpa.pipeline`, `adpa.stages`, ... On a machine where it is not
installed (a bare CUDA machine running `python -m benchmarks.gpu_check` on a copy of the tree), `adpa` is
made here the namespace whose one portion is the repository root: the same mapping the install makes.
"""

import importlib.util
import sys
import types
from pathlib import Path

if importlib.util.find_spec("adpa") is None:
    _adpa = types.ModuleType("adpa")
    _adpa.__path__ = [str(Path(__file__).resolve().parent.parent)]
    sys.modules["adpa"] = _adpa
