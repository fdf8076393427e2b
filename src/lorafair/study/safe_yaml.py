"""Study files read as plain data: YAML without anchors or aliases, without duplicate keys or control
characters in keys, and no larger than a study needs, so that reading any file answers within
seconds and in little memory, and no key is silently overwritten.

Anchors and aliases (``&x`` / ``*x``) are refused rather than expanded: a few lines of them expand
to gigabytes ("billion laughs") or refer to themselves, and a study never needs them. Limits:
:data:`MAX_BYTES` of text, :data:`MAX_NODES` values in all, :data:`MAX_ITEMS` entries in one list
or mapping and :data:`MAX_DEPTH` levels of nesting, each far above any real study.
"""

from __future__ import annotations

from typing import Any

import yaml

from lorafair.errors import UserError

MAX_BYTES = 256 * 1024
MAX_NODES = 20_000
MAX_ITEMS = 1_000
MAX_DEPTH = 24


class _Refused(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases and counts what it composes."""

    def __init__(self, text: str):
        super().__init__(text)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Refused(line, "anchors and aliases (&name, *name) are not accepted in a study file; "
                                 "write each value out in full")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Refused(line, f"more than {MAX_NODES} values in one study file; no study needs that many, "
                                 "shorten the lists")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(line, f"nested more than {MAX_DEPTH} levels deep; a study needs a few levels only")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _check_node(node: yaml.Node) -> None:
    """Duplicate keys, control characters in keys and over-long lists or mappings, anywhere."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (yaml.SequenceNode, yaml.MappingNode)) and len(n.value) > MAX_ITEMS:
            raise _Refused(n.start_mark.line + 1, f"{len(n.value)} entries in one list or mapping, more than the "
                                                  f"{MAX_ITEMS} any study needs; shorten it")
        if isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in n.value:
                line = k.start_mark.line + 1
                if not isinstance(k, yaml.ScalarNode):
                    raise _Refused(line, "a key must be a plain word, not a list or mapping")
                if any(ord(c) < 32 or ord(c) == 127 for c in k.value):
                    raise _Refused(line, f"the key {k.value!r} holds a control character (a line break or tab "
                                         "inside a key); write the key as one plain word")
                if k.value in seen:
                    raise _Refused(line, f"the key {k.value!r} appears twice in the same section (first at line "
                                         f"{seen[k.value]}); keep one and remove the other")
                seen[k.value] = line
                stack.append(v)


def load(text: str, src: str) -> tuple[Any, yaml.Node | None]:
    """The data of a study file's text and its node tree (for key line numbers), or a UserError
    naming `src` and the line."""
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise UserError(f"{src}: {size} bytes, more than the {MAX_BYTES} any study file needs; "
                        "check that this is the study file and shorten it")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_node(node)
        return loader.construct_document(node), node
    except _Refused as e:
        raise UserError(f"{src}:{e.line}: {e.message}") from None
    finally:
        loader.dispose()
