"""Command-line flags declared once, on the options dataclass they fill.

    @dataclass(frozen=True)
    class ImportOptions:
        vocab_size: int = option(20_000, "Text: vocabulary entries in all.", minimum=3)

A field made with `option` carries its flag's help, name (default: the field's name in kebab
case), bounds, metavar and, for a value typed as text, the function that parses it.
`flags_of(cls)` lists them as `Flag`s; every front end builds its flags from that list
(`rayfleet render` and `data import` through cli/options.py's `with_flags`, the operator
through argparse), `options_from` turns the parsed values back into the dataclass, checked
against the same bounds, and `Flag.format` writes a value out again (a rendered file's
header). So a default, a bound or a help text lives in one place, and the library call
(`ImportOptions(vocab_size=2)`) is refused exactly as the flag is.

Pure: no typer, no argparse.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from rayfleet.errors import BadInputError


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    metavar: str | None = None,
    parse: Callable[[str], Any] | None = None,
    **meta: Any,
) -> Any:
    """A dataclass field with its command-line flag. Tuple defaults make repeatable flags (one
    value each). `parse` turns the flag's text into the field's value (e.g. "32x32" -> (32,
    32)); `meta` is for the front ends (e.g. which objects a render flag shapes)."""
    return field(
        default=default,
        metadata={
            "help": help, "flag": flag, "minimum": minimum, "maximum": maximum,
            "metavar": metavar, "parse": parse, "meta": dict(meta),
        },
    )  # fmt: skip


@dataclass(frozen=True)
class Flag:
    """One options field as a command-line option."""

    field: str
    name: str  # without the dashes
    type: type  # of one value as typed: str, int, float or bool
    default: Any
    help: str
    repeat: bool
    minimum: float | None
    maximum: float | None
    metavar: str
    parse: Callable[[str], Any] | None
    meta: Mapping[str, Any]

    @property
    def option(self) -> str:
        return f"--{self.name}"

    def format(self, value: Any) -> list[str]:
        """`--name=value` (once per item for a repeatable flag)."""
        items = value if self.repeat else (value,)
        return [f"{self.option}={_text(item)}" for item in items]


def flag_name(f: Any) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


def flags_of(cls: type) -> tuple[Flag, ...]:
    """The flags of `cls`'s `option` fields, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        if "help" not in f.metadata:
            continue
        kind = str if f.metadata["parse"] else _value_type(hints[f.name])
        out.append(
            Flag(
                field=f.name,
                name=flag_name(f),
                type=kind,
                default=f.default,
                help=f.metadata["help"],
                repeat=isinstance(f.default, tuple),
                minimum=f.metadata["minimum"],
                maximum=f.metadata["maximum"],
                metavar=f.metadata["metavar"] or _metavar(f, kind),
                parse=f.metadata["parse"],
                meta=f.metadata["meta"],
            )
        )
    return tuple(out)


def options_from(cls: type, flags: tuple[Flag, ...], values: Mapping[str, Any]) -> Any:
    """`cls` from parsed flags keyed by field name: text goes through the flag's `parse`; a
    repeatable flag given no value (None or empty) and a missing key keep the default.
    BadInputError (from `cls` or a parser) for a bad value."""
    kwargs = {}
    for flag in flags:
        if flag.field not in values:
            continue
        value = values[flag.field]
        if flag.repeat:
            if not value:
                continue
            value = tuple(value)
        elif flag.parse is not None and isinstance(value, str):
            value = flag.parse(value)
        kwargs[flag.field] = value
    return cls(**kwargs)


def check_bounds(options: Any) -> None:
    """BadInputError naming the flag when a field is outside its `minimum`/`maximum`; call
    it from the dataclass's __post_init__, so library callers get the flag's checks."""
    for f in fields(options):
        value = getattr(options, f.name)
        if value is None or "help" not in f.metadata:
            continue
        low, high = f.metadata["minimum"], f.metadata["maximum"]
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = " and ".join(
                f"{word} {bound}"
                for word, bound in ((">=", low), ("<=", high))
                if bound is not None
            )
            raise BadInputError(f"--{flag_name(f)} {value}: must be {bounds}")


def _text(value: Any) -> str:
    return (
        json.dumps(value, sort_keys=True, separators=(",", ":"))
        if isinstance(value, dict)
        else str(value)
    )


def _value_type(hint: Any) -> type:
    """The type of one value: int, float or bool fields (and tuples or optionals of them),
    else str (text, or JSON for a NetworkPolicy peer)."""
    if typing.get_origin(hint) is tuple:
        hint = typing.get_args(hint)[0]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    return hint if hint in (int, float, bool) else str


def _metavar(f: Any, kind: type) -> str:
    """`--head-memory MEMORY`, `--backoff-limit N`, `--val-fraction X`."""
    if kind is int:
        return "N"
    if kind is float:
        return "X"
    return flag_name(f).rsplit("-", 1)[-1].upper()
