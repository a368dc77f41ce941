"""Reply frames declared once: the annotations of a reply class say how it looks on the wire.

    @reply("ack")
    @attrs.frozen
    class Ack(Reply):
        cid: str                      # as it is, under the camelCase of the attribute name
        id: Annotated[int, ID]        # an id: a decimal string on the wire
        timestamp: int
        rid: str | None = None        # the request id: written last, and only when set

`reply` sets the class's wire code and writes its `wire()` method (the frame's `message`
object) from the fields, in their order, as Python source compiled once per class (the way
attrs writes `__init__`), so `wire()` costs what a hand-written one does. What an `Annotated`
field may say, in any order:
- a function (`ID`, `IDS`, `OPT_ID`, `ENUM` or any): the wire value is `function(value)`;
- `FromFrame(function)`: the wire value is `function(frame)`, for values that need other
  fields (the function may read `Local` fields);
- `Spread(function)`: `function(value)` is a dict whose keys are merged into the body (on the
  first field it becomes the body, so the function must return a new dict);
- `Name("error")`: the wire name, instead of the camelCase one;
- `OMIT_NONE` / `OMIT_FALSY`: the key is left out when the value is None / falsy;
- `Local`: the field is not on the wire;
- `Const`: the key always holds the field's default (declare it `attrs.field(init=False, ...)`).
`WIRE_SOURCE` on each class holds the generated source. The annotations are evaluated in the
module's namespace (`typing.get_type_hints`): declare reply classes at module level.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

C = TypeVar("C", bound=type)

RID = "rid"


class Omit(enum.Enum):
    NEVER = "never"
    NONE = "none"
    FALSY = "falsy"


OMIT_NONE = Omit.NONE
OMIT_FALSY = Omit.FALSY


class _Marker(enum.Enum):
    LOCAL = "local"
    CONST = "const"


Local = _Marker.LOCAL
Const = _Marker.CONST


@attrs.frozen
class Name:
    wire: str


@attrs.frozen
class Spread:
    convert: Callable[[Any], dict[str, Any]]


@attrs.frozen
class FromFrame:
    convert: Callable[[Any], Any]


def ID(value: int) -> str:  # noqa: N802 - reads as a type in declarations
    """An id: a decimal string on the wire."""
    return str(value)


def OPT_ID(value: int | None) -> str | None:  # noqa: N802
    """An id or null."""
    return None if value is None else str(value)


def IDS(values: Any) -> list[str]:  # noqa: N802
    """A sequence of ids: a list of decimal strings."""
    return [str(v) for v in values]


def ENUM(value: enum.Enum) -> Any:  # noqa: N802
    """An enum member: its value."""
    return value._value_


# Converters written inline in the generated source instead of called.
_INLINE: dict[Callable[..., Any], str] = {
    ID: "str({v})",
    OPT_ID: "(None if {v} is None else str({v}))",
    IDS: "[str(_x) for _x in {v}]",
    ENUM: "{v}._value_",
}


@attrs.define
class _Field:
    """What the annotations say about one field."""

    name: str
    key: str
    convert: Callable[[Any], Any] | None = None
    of_frame: bool = False
    spread: bool = False
    omit: Omit = Omit.NEVER
    local: bool = False
    const: bool = False


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def reply(code: str) -> Callable[[C], C]:
    """Class decorator (above `attrs.frozen`): wire code `code` and a generated `wire()`."""

    def build(cls: C) -> C:
        cls.CODE = code  # type: ignore[attr-defined]
        wire = _compile_wire(cls, _fields(cls))
        cls.wire = wire  # type: ignore[attr-defined]
        cls.WIRE_SOURCE = wire.__doc__  # type: ignore[attr-defined]
        return cls

    return build


def _fields(cls: type) -> list[_Field]:
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for attribute in attrs.fields(cls):
        spec = _Field(attribute.name, camel(attribute.name))
        for item in getattr(hints[attribute.name], "__metadata__", ()):
            _apply(spec, item)
        if spec.const:
            if attribute.init:
                raise TypeError(f"{cls.__name__}.{attribute.name}: a Const field needs init=False")
        out.append(spec)
    return out


def _apply(spec: _Field, item: Any) -> None:
    if item is Local:
        spec.local = True
    elif item is Const:
        spec.const = True
    elif isinstance(item, Omit):
        spec.omit = item
    elif isinstance(item, Name):
        spec.key = item.wire
    elif isinstance(item, Spread):
        spec.convert, spec.spread = item.convert, True
    elif isinstance(item, FromFrame):
        spec.convert, spec.of_frame = item.convert, True
    elif callable(item):
        spec.convert = item
    else:
        raise TypeError(f"{spec.name}: {item!r} says nothing about the wire")


def _compile_wire(cls: type, fields: list[_Field]) -> Callable[[Any], dict[str, Any]]:
    """`wire(self)` for `cls`, compiled from source; its docstring is the source."""
    namespace: dict[str, Any] = {}
    defaults = {a.name: a.default for a in attrs.fields(cls)}
    head = ""  # the expression that makes the body, when a spread field's dict is the body
    items: list[str] = []  # "key": expression of the dict literal, while nothing optional came
    tail: list[str] = []  # statements after it (optional keys, spreads, keys after those)
    plain_rid = False
    for number, spec in enumerate(fields):
        if spec.local:
            continue
        if spec.name == RID and spec == _Field(RID, RID):
            plain_rid = True
            continue
        value = f"self.{spec.name}"
        expression = repr(defaults[spec.name]) if spec.const else _convert(spec, value, number, namespace)
        if spec.spread and not head and not items:
            head = expression
        elif spec.spread:
            tail.append(f"body.update({expression})")
        elif spec.omit is Omit.NEVER and not head and not tail:
            items.append(f"{spec.key!r}: {expression}")
        elif spec.omit is Omit.NEVER:
            tail.append(f"body[{spec.key!r}] = {expression}")
        else:
            test = f"{value} is not None" if spec.omit is Omit.NONE else value
            tail.append(f"if {test}: body[{spec.key!r}] = {expression}")
    if plain_rid:
        tail.append(f"if self.{RID} is not None: body[{RID!r}] = self.{RID}")
    lines = ["def wire(self):", f"    body = {head or '{' + ', '.join(items) + '}'}"]
    lines += [f"    {statement}" for statement in tail]
    lines.append("    return body")
    source = "\n".join(lines)
    exec(compile(source, f"<wire of {cls.__qualname__}>", "exec"), namespace)
    wire: Callable[[Any], dict[str, Any]] = namespace["wire"]
    wire.__doc__ = source
    wire.__qualname__ = f"{cls.__qualname__}.wire"
    return wire


def _convert(spec: _Field, value: str, number: int, namespace: dict[str, Any]) -> str:
    if spec.convert is None:
        return value
    if spec.of_frame:
        namespace[f"_c{number}"] = spec.convert
        return f"_c{number}(self)"
    inline = _INLINE.get(spec.convert)
    if inline is not None:
        return inline.format(v=value)
    namespace[f"_c{number}"] = spec.convert
    return f"_c{number}({value})"
