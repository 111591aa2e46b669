"""Command lines derived from config dataclasses: each pipeline declares its options once.

A field ``foo_bar`` becomes ``--foo-bar``; its type gives the parsing (``X | None`` is optional,
``Literal[...]`` gives the choices, ``tuple[int, ...]`` reads ``1,2,3``, ``bool`` is a switch:
``--foo`` when the default is False, ``--no-foo`` when it is True); a field without a default is
a required flag. :func:`option` adds the help text, a metavar, or a group of flags of which
exactly one must be given.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str | None = None,  # noqa: A002 (argparse's name)
    metavar: str | None = None,
    one_of: str | None = None,
) -> Any:
    """A config field with command-line metadata.

    Parameters
    ----------
    default : the field's default (none: the flag is required, unless ``one_of`` is set)
    help : the flag's help text (argparse formatting: write ``%%`` for a percent sign)
    metavar : the value's name in the usage line
    one_of : flags sharing this name form a group of which exactly one must be given
    """
    meta = {"help": help, "metavar": metavar, "one_of": one_of}
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v})


def build_parser(
    cls: type, *, prog: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one flag per field of the dataclass ``cls``, in field order."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    groups: dict[str, Any] = {}  # one_of name -> its mutually exclusive group
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        one_of = f.metadata.get("one_of")
        if one_of is not None and one_of not in groups:
            groups[one_of] = parser.add_mutually_exclusive_group(required=True)
        target = groups[one_of] if one_of is not None else parser
        flag, kwargs = _flag(f, hints[f.name])
        target.add_argument(flag, dest=f.name, **kwargs)
    return parser


def parse_config(cls: type[C], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> C:
    """Parse ``argv`` with a parser from :func:`build_parser` and build the ``cls`` config."""
    args = parser.parse_args(argv)
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def _flag(f: dataclasses.Field[Any], hint: Any) -> tuple[str, dict[str, Any]]:
    kind, optional = _unwrap_optional(hint)
    has_default = f.default is not dataclasses.MISSING
    kwargs: dict[str, Any] = {"help": f.metadata.get("help")}
    if f.metadata.get("metavar"):
        kwargs["metavar"] = f.metadata["metavar"]
    name = f.name.replace("_", "-")
    if kind is bool:
        if not has_default:
            raise TypeError(f"{f.name}: a bool option needs a default")
        action = "store_false" if f.default else "store_true"
        return (f"--no-{name}" if f.default else f"--{name}"), {**kwargs, "action": action}
    if has_default:
        kwargs["default"] = f.default
    elif not optional and f.metadata.get("one_of") is None:
        kwargs["required"] = True
    if typing.get_origin(kind) is typing.Literal:
        kwargs["choices"] = typing.get_args(kind)
    elif typing.get_origin(kind) is tuple:
        kwargs["type"] = _comma_list(typing.get_args(kind)[0])
    elif kind in (str, int, float, Path):
        kwargs["type"] = kind
    else:
        raise TypeError(f"{f.name}: no command-line parsing for {kind!r}")
    return f"--{name}", kwargs


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(``X``, True) for ``X | None``; (``hint``, False) otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _comma_list(item: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    noun = {int: "integers", float: "numbers"}.get(item, "values")  # type: ignore[call-overload]

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return tuple(item(v) for v in text.split(",") if v.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {noun}, got {text!r}"
            ) from exc

    return parse
