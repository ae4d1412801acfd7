"""YAML a user names (a recipe, a `--set` value), read with bounded memory and bounded recursion.

`yaml.safe_load` builds no objects from tags, but aliases let 2.5 KB describe 10^9 nodes ("billion
laughs"): the parsed value shares them, and the first print, copy or JSON dump of it expands them all.
So the document is composed first, its size counted as if every alias were expanded (counted, not
built), and refused beyond `MAX_NODES`; nesting is refused beyond `MAX_DEPTH` levels before Python's
own recursion limit is reached.
"""

from __future__ import annotations

import yaml

MAX_NODES = 200_000  # the largest built-in recipe has ~200; a generous bound, far below harm
MAX_DEPTH = 64


class YamlBoundError(ValueError):
    """A document over the bounds; the message says which bound."""


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlBoundError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node) -> int:
    """Nodes the document would have with every alias expanded; refuses a document that refers to itself."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise YamlBoundError("an alias refers to the node that contains it")
        busy.add(key)
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v) for v in node.value)
        else:
            n = 1
        busy.discard(key)
        sizes[key] = n = min(n, MAX_NODES + 1)  # saturate: the count itself stays small
        return n

    return size(root)


def read(text: str):
    """The document in `text` as plain Python values (what `yaml.safe_load` gives), or YamlBoundError /
    yaml.YAMLError."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_NODES:
            raise YamlBoundError(f"more than {MAX_NODES:,} values once its aliases are expanded "
                                 f"(aliases that repeat each other: a 'billion laughs' document)")
        return loader.construct_document(node)
    finally:
        loader.dispose()
