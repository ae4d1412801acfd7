"""Real English text available offline: the Python documentation topics shipped with CPython."""

from pydoc_data.topics import topics


def real_text() -> str:
    return "\n\n".join(topics[k] for k in sorted(topics))
