"""msgspec's refusals (`Expected `int` <= 100 - at `$.top``) read back as a field and
the rule it broke, for request bodies (dispatcher/parse.py) and task payloads
(tasks/typed.py) alike."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import inspect as mi

STEP = re.compile(r"\[(\d+)\]|\[(\.\.\.)\]|(\w+)")


@functools.lru_cache(maxsize=256)
def info(kind: type) -> mi.Type:
    return mi.type_info(kind)


def plain(t: mi.Type) -> mi.Type:
    """The type under its metadata, and under the None of a nullable field."""
    while True:
        if isinstance(t, mi.Metadata):
            t = t.type
        elif isinstance(t, mi.UnionType):
            kinds = [k for k in t.types if not isinstance(k, mi.NoneType)]
            if len(kinds) != 1:
                return t
            t = kinds[0]
        else:
            return t


@dataclass(frozen=True)
class Refusal:
    """What msgspec refused: `kind` is "missing" or "unknown" (of `field`, in the object
    at `where`), "key" (a key of the object at `where`, of declared type `type`, broke
    `text`) or "rule" (the value at `where`, of declared type `type`, broke `text`).
    `where` is msgspec's path (`tasks[1].payload`, `progress[...]`); `head` and `last`
    split it for a sentence, a dict's refused key named (`progress['t1']` -> "progress",
    "['t1']"; `tasks[1].priority` -> "tasks[1]", "priority")."""

    kind: str
    where: str
    field: str
    type: mi.Type | None
    value: Any
    text: str
    head: str = ""
    last: str = ""

    @property
    def rule(self) -> str:
        """The rule broken, as the end of a sentence: "must be at most 100, not 101"."""
        if self.kind == "key":
            return f"is not valid ({self.text} (a key))"
        if self.type is None or self.value is UNKNOWN:
            return f"is not valid ({self.text})"
        return payload_rule(plain(self.type), self.text, self.value)

    @staticmethod
    def describe(value: object) -> str:
        """How a JSON value reads in an error message ("a boolean", "a string", ...)."""
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "a boolean"
        if isinstance(value, int):
            return "an integer"
        if isinstance(value, float):
            return "a number with a decimal point"
        if isinstance(value, str):
            return "a string"
        if isinstance(value, (list, tuple)):
            return "an array"
        if isinstance(value, Mapping):
            return "an object"
        return f"a {type(value).__name__}"


UNKNOWN: Any = object()  # a value explain() could not find


def explain(text: str, data: Any, kind: type) -> Refusal:
    """msgspec's complaint about converting `data` to `kind`, located. Where the path
    cannot be followed (a union, a tuple), the type is None and the value UNKNOWN: the
    rule is msgspec's own text."""
    if " - at `key` in `$" in text:  # a dict's key broke the rule
        text, _, where = text.partition(" - at `key` in `$")
        where = where.rstrip("`").lstrip(".")
        t = info(kind)
        try:
            for name in where.split("."):
                t = next(f.type for f in plain(t).fields if f.encode_name == name)
            key_type = plain(t).key_type
        except (AttributeError, StopIteration):
            key_type = None
        return Refusal("key", where, where.rpartition(".")[2], key_type, UNKNOWN, text, where)
    text, _, where = text.partition(" - at `$")
    where = where.rstrip("`").lstrip(".")
    t, value = info(kind), data
    head, last = "", ""  # the path for a sentence: up to its last field name, and from it
    try:
        for index, entry, name in STEP.findall(where):
            t = plain(t)
            if index:
                t, value = t.item_type, value[int(index)]
                last += f"[{index}]"
            elif entry:  # a dict's value: which one, when a Struct can say
                if isinstance(plain(t.value_type), mi.StructType):
                    key = _first_refused(value, plain(t.value_type).cls)
                    t, value = t.value_type, value[key]
                    last += f"[{key!r}]"
                else:
                    t, value = t.value_type, UNKNOWN
                    last += "[...]"
            elif isinstance(t, mi.DictType):
                t, value = t.value_type, value[name]
                head, last = joined(head, last), name
            else:
                t, value = next(f.type for f in t.fields if f.encode_name == name), value[name]
                head, last = joined(head, last), name
    except (AttributeError, KeyError, IndexError, TypeError, StopIteration):
        t, value = None, UNKNOWN  # a union, a tuple...: say what msgspec said
    if text.startswith(("Object missing required field", "Object contains unknown field")):
        kind_ = "missing" if "missing" in text else "unknown"
        return Refusal(kind_, where, text.split("`")[1], t, value, text, head, last)
    return Refusal("rule", where, where.rpartition(".")[2], t, value, text, head, last)


def joined(head: str, field: str) -> str:
    return f"{head}.{field}" if head and field else head or field


def _first_refused(mapping: dict, cls: type) -> Any:
    """The first key of `mapping` whose value the Struct `cls` refuses."""
    for key, value in mapping.items():
        try:
            msgspec.convert(value, cls)
        except msgspec.ValidationError:
            return key
    return next(iter(mapping))


def show(value: object, limit: int = 40) -> str:
    """A value for an error message, shortened if long (a huge int or a long string)."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


NOUNS = {
    mi.IntType: "an integer",
    mi.FloatType: "a number",
    mi.StrType: "a string",
    mi.BoolType: "true or false",
    mi.ListType: "an array",
    mi.DictType: "an object",
    mi.StructType: "an object",
}


def payload_rule(t: mi.Type, text: str, value: Any) -> str:
    """A payload field's broken rule, with the value it had."""
    if ", got `" in text:
        if isinstance(t, mi.LiteralType):
            t = plain(mi.type_info(type(t.values[0])))
        noun = NOUNS.get(type(t), "of another type")
        return f"must be {noun}, not {Refusal.describe(value)}"
    if isinstance(t, mi.LiteralType):
        return f"must be one of {', '.join(map(str, t.values))}, not {show(value)}"
    if isinstance(t, (mi.IntType, mi.FloatType)):
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, not {value}"
        if t.ge is not None and t.le is not None:
            return f"must be between {_num(t.ge)} and {_num(t.le)}, not {show(value)}"
        bounds = [
            f"{words} {_num(bound)}"
            for words, bound in (
                ("at least", t.ge),
                ("greater than", t.gt),
                ("at most", t.le),
                ("less than", t.lt),
            )
            if bound is not None
        ]
        if bounds:
            return f"must be {' and '.join(bounds)}, not {show(value)}"
    if isinstance(t, (mi.StrType, mi.ListType)) and "length" in text:
        unit = "characters" if isinstance(t, mi.StrType) else "items"
        if "length <=" in text:
            return f"must be at most {t.max_length} {unit} long, not {len(value)}"
        return f"must be at least {t.min_length} {unit} long, not {len(value)}"
    if isinstance(t, mi.StrType) and t.pattern:
        return f"must match the pattern {t.pattern!r}"
    return f"is not valid ({text})"


def _num(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)
