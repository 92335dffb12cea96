"""The YAML loader of options files: PyYAML's safe loader that also refuses repeated keys and alias bombs.

PyYAML keeps the last of two equal keys without a word, so a second ``network_g:`` further down a
file silently replaces the first; and an alias (``*name``) is shared, not copied, while loading, so a
"billion laughs" file loads in a blink and then blows up whatever walks or prints it (BasicSR logs
every option). :class:`StrictLoader` checks the composed document first, in time linear in the text:

- a key written twice in one mapping is refused, naming the key, both lines and the file (keys that
  a merge (``<<: *defaults``) brings in may still be overridden, as YAML intends);
- aliases that expand to more than :data:`MAX_ALIAS_NODES` nodes beyond those written, or an alias
  inside the node it names (a document without end), are refused without expanding anything.

Example:
    >>> yaml.load("lr: 1\\nlr: 2", Loader=StrictLoader)
    Traceback (most recent call last):
    YamlRefused: <unicode string>: lr is set twice, at line 1 and line 2 (...); keep one
"""

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_ALIAS_NODES = 1000
"""The most nodes that aliases may add to a document once expanded (options files use a handful, if any)."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlRefused(yaml.YAMLError):
    """A document the strict loader refuses; ``problem`` says why, without the file's name."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a repeated key and aliases that expand past :data:`MAX_ALIAS_NODES`."""

    def construct_document(self, node: Node) -> Any:
        self._check_aliases(node)
        self._check_keys(node)
        return super().construct_document(node)

    def _refuse(self, problem: str) -> YamlRefused:
        return YamlRefused(getattr(self, "name", "<yaml>"), problem)

    def _check_aliases(self, root: Node) -> None:
        """Count the nodes of the document with its aliases expanded, each distinct node once (no expansion)."""
        expanded: dict[int, int] = {}
        open_nodes: set[int] = set()
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, children_done = stack.pop()
            if id(node) in expanded:
                continue
            children = _children(node)
            if children_done:
                open_nodes.discard(id(node))
                expanded[id(node)] = 1 + sum(expanded[id(child)] for child in children)
                continue
            if id(node) in open_nodes:  # reached again below itself
                line = node.start_mark.line + 1
                raise self._refuse(
                    f"an alias refers to the node (line {line}) that contains it, which never ends; write the value out"
                )
            open_nodes.add(id(node))
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise self._refuse(
                        f"an alias refers to the node (line {child.start_mark.line + 1}) that contains it, which "
                        "never ends; write the value out"
                    )
                stack.append((child, False))
        added = expanded[id(root)] - len(expanded)
        if added > MAX_ALIAS_NODES:
            raise self._refuse(
                f"its aliases (*name) expand to {added:,} more nodes than the {len(expanded):,} written, above the "
                f"bound of {MAX_ALIAS_NODES:,} (an alias bomb?); write the values out, or use fewer aliases"
            )

    def _check_keys(self, root: Node) -> None:
        """Refuse a key written twice in one mapping, naming its path and both lines."""
        seen_nodes: set[int] = set()
        stack: list[tuple[Node, str]] = [(root, "")]
        while stack:
            node, path = stack.pop()
            if id(node) in seen_nodes:
                continue
            seen_nodes.add(id(node))
            if isinstance(node, SequenceNode):
                stack.extend((item, f"{path}[{index}]") for index, item in enumerate(node.value))
            elif isinstance(node, MappingNode):
                lines: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == _MERGE_TAG:
                        continue
                    key = self.construct_object(key_node, deep=True) if isinstance(key_node, ScalarNode) else None
                    where = f"{path}.{key}" if path else str(key)
                    try:
                        first = lines.get(key) if key is not None else None
                    except TypeError:  # unhashable: the constructor names it
                        first = None
                    line = key_node.start_mark.line + 1
                    if first is not None:
                        raise self._refuse(
                            f"{where} is set twice, at line {first} and line {line} (the second would silently "
                            "replace the first); keep one"
                        )
                    if key is not None:
                        lines[key] = line
                    stack.append((value_node, where))


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def load_one_value(text: str) -> Any:
    """One YAML value as written after ``--set key=``: a scalar or a flow collection (``[1, 2]``, ``{a: 1}``).

    Raises:
        YamlRefused: the text holds several documents, a block collection or a block scalar (``|``, ``>``).
        yaml.YAMLError: the text is not valid YAML.
    """
    loader = StrictLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.composer.ComposerError as error:
            if "single document" in str(error.context):
                raise YamlRefused("--set", "expected one value, not several YAML documents") from None
            raise
        if node is None:
            return None
        block = (isinstance(node, MappingNode | SequenceNode) and not node.flow_style) or (
            isinstance(node, ScalarNode) and node.style in ("|", ">")
        )
        if block or (isinstance(node, ScalarNode) and not node.style and "\n" in text.strip()):
            raise YamlRefused(
                "--set",
                "expected one value on one line: a number, a string, true/false, null, or a flow list [a, b] or "
                "mapping {k: v}; not a block of YAML",
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()
