"""The stages: `teacher_cache` (stage one), `distill` (stage two) and `evaluate`, over `common`.

Stage one and stage two never import each other: they meet only through artifacts in the store.
The map is in docs/ARCHITECTURE.md.
"""
