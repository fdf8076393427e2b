"""Strict dataclass schemas read from YAML: every key states the values it accepts (:func:`key`),
an unknown key is an error naming the closest valid one, and every error names the file, the key and
its line. The study (``lorafair.study.config``) and every task's options are built with it."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from lorafair.errors import UserError


@dataclass(frozen=True)
class Bounds:
    """An interval of accepted numbers, written as in mathematics: "[0, 1)", "(0, 1]", ">= 1", "> 0"."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> "Bounds":
        t = text.replace(" ", "")
        for op, kw in ((">=", {}), (">", {"lo_open": True}), ("<=", {}), ("<", {"hi_open": True})):
            if t.startswith(op):
                side = "lo" if op[0] == ">" else "hi"
                return cls(**{side: float(t[len(op):]), **kw}, text=text)
        lo, hi = t[1:-1].split(",")
        return cls(float(lo), float(hi), t[0] == "(", t[-1] == ")", text=text)

    def __contains__(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def describe(self) -> str:
        return f"in {self.text}" if self.text[0] in "[(" else self.text


def key(default: Any = dataclasses.MISSING, accepts: str | None = None, *, one_of: tuple | None = None,
        factory: Callable[[], Any] | None = None, nonempty: bool = False, pattern: str | None = None):
    """A study key: its default and the values it accepts, checked (with the key's file and line)
    whenever a study is loaded. `accepts` is an interval ("[0, 1)", "> 0", ">= 1") that numbers,
    and every number of a list, must lie in; `one_of` lists the accepted words (of a word or of every
    word of a list); `nonempty` refuses an empty list or word; `pattern` is a regular expression
    a word must match in full. None is always accepted where the type allows it (it means default)."""
    meta = {"bounds": Bounds.parse(accepts) if accepts else None, "one_of": one_of, "nonempty": nonempty,
            "pattern": pattern}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _check_value(meta, value, where: str) -> None:
    """The range, words and length a key accepts (see `key`)."""
    if value is None or not meta:
        return
    items = value if isinstance(value, list) else [value]
    if meta.get("nonempty") and (value == [] or value == ""):
        raise UserError(f"{where}: is empty; give at least one value or remove the key for the default")
    for v in items:
        b, words, pattern = meta.get("bounds"), meta.get("one_of"), meta.get("pattern")
        if b is not None and isinstance(v, (int, float)) and v not in b:
            raise UserError(f"{where}: must be {b.describe()}, got {v!r}; give a value {b.describe()}")
        if words is not None and v not in words:
            close = difflib.get_close_matches(str(v), words, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(words)}"
            raise UserError(f"{where}: {v!r} is not one of {', '.join(words)}; {hint}")
        if pattern is not None and not (isinstance(v, str) and re.fullmatch(pattern, v)):
            raise UserError(f"{where}: {v!r} is not allowed here; use letters, digits and the characters the key "
                            f"allows ({pattern})")


def key_lines(node, prefix=()) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = prefix + (k.value,)
            out[path] = k.start_mark.line + 1
            out.update(key_lines(v, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[prefix + (i,)] = v.start_mark.line + 1
            out.update(key_lines(v, prefix + (i,)))
    return out


def _where(src: str, path: tuple, lines: dict) -> str:
    dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
    line = lines.get(path)
    return f"{src}:{line}: {dotted}" if line else f"{src}: {dotted}"


def build(cls, raw: Any, src: str, path: tuple, lines: dict):
    if raw is None:
        raw = {}
    shorthand = getattr(cls, "SHORTHAND", None)
    if shorthand and isinstance(raw, str):  # e.g. "- base" for {type: base}
        raw = {shorthand: raw}
    if not isinstance(raw, dict):
        raise UserError(f"{_where(src, path, lines)}: expected a mapping, got {type(raw).__name__}; write it as "
                        "indented key: value lines")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source_path"}
    kwargs = {}
    for name, value in raw.items():
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(fields)}"
            raise UserError(f"{_where(src, path + (name,), lines)}: unknown key {name!r}; {hint}")
        kwargs[name] = _coerce(hints[name], value, src, path + (name,), lines)
        _check_value(fields[name].metadata, kwargs[name], _where(src, path + (name,), lines))
    return cls(**kwargs)


def _coerce(tp, value, src, path, lines):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(a, value, src, path, lines)
            except UserError as e:
                errors.append(e)
        raise errors[0]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, src, path, lines)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{_where(src, path, lines)}: expected a list, got {_tname(value)}; write a list, "
                            "e.g. [a, b]")
        return [_coerce(args[0], v, src, path + (i,), lines) for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise UserError(f"{_where(src, path, lines)}: expected a mapping, got {_tname(value)}; write it as "
                            "indented key: value lines")
        return value
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise UserError(f"{_where(src, path, lines)}: {value!r} is not a finite number; give a number")
        return float(value)
    if tp in (int, str, bool) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise UserError(f"{_where(src, path, lines)}: expected {tp.__name__}, got {_tname(value)} {value!r}; "
                    f"give a{'n' if tp is int else ''} {tp.__name__}")


def _tname(v) -> str:
    return type(v).__name__


def build_options(cls, raw: dict, src: str, section: str):
    """Validate a task's own options mapping against its dataclass (strict, like the rest)."""
    return build(cls, raw or {}, src, (section,), {})
