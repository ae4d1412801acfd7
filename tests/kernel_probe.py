"""Builds a world model (argv[2], default the tiny world's SFT teacher) in a fresh store (argv[1]) and prints
the sha256 of its weights (run by tests/test_kernels.py in processes started under other kernel settings)."""

import hashlib
import sys
from pathlib import Path

from artifacts import Store
from pipeline.builtin import resolve_model

model = resolve_model(sys.argv[2] if len(sys.argv) > 2 else "builtin:tiny-teacher-sft", Store(sys.argv[1]))
h = hashlib.sha256()
for f in sorted(Path(model.source).glob("*.safetensors")):
    h.update(f.read_bytes())
print(h.hexdigest())
