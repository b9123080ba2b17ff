"""A setting is declared once: its type and limits in a pydantic field, everything else in a
`Setting` beside them, and the CLI flags, the proto mapping and the help text follow from that
declaration (the model: vLLM's EngineArgs, which generates its own CLI).

    partitions: Annotated[int, Setting("N, rows per group the average divides by", proto="settings.partitions")] = Field(8, ge=1, le=4096)

gives `--partitions N` (an int, default 8, help naming the limits) and reads
`GenerateRequest.settings.partitions` when the client set it. Validation stays with the model:
a value from any entry point meets the same limits and the same error.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class Setting:
    """What a field's type and limits do not say: its help, its flag and its proto field."""

    help: str
    flag: str | None = None  # default: --name-with-dashes
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    proto: str | None = None  # a GenerateRequest field path ("settings.top_k"); read only when the client set it
    choices: Callable[[], Sequence[str]] | None = None  # read when the parser is built (a registry may grow)
    zero_is_none: bool = False  # 0 on the CLI or in the proto means None (top_k: the whole vocabulary)
    parse: Callable[[str], Any] | None = None  # a CLI string to the field's value (comma lists)
    repeat: bool = False  # the flag may repeat; the values form a tuple
    cli: bool = True


def declared(model: type[BaseModel]) -> dict[str, tuple[FieldInfo, Setting]]:
    """The model's declared settings, in field order."""
    out = {}
    for name, field in model.model_fields.items():
        setting = next((m for m in field.metadata if isinstance(m, Setting)), None)
        if setting is not None:
            out[name] = (field, setting)
    return out


def _base(annotation: Any) -> Any:
    """int | None -> int; the argument of Optional."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


LIMITS = ((annotated_types.Gt, ">", "gt"), (annotated_types.Ge, ">=", "ge"), (annotated_types.Lt, "<", "lt"), (annotated_types.Le, "<=", "le"))


def limits(field: FieldInfo) -> str:
    """'>= 1, <= 4096' from the field's constraints; '' without any."""
    return ", ".join(f"{op} {getattr(m, attr):g}" for m in field.metadata for cls, op, attr in LIMITS if isinstance(m, cls))


def flag_of(name: str, setting: Setting) -> str:
    return setting.flag or "--" + name.replace("_", "-")


def add_arguments(parser: Any, model: type[BaseModel],
                  names: Iterable[str] | None = None, defaults: dict[str, Any] | None = None, unset: bool = False) -> None:
    """One flag per declared setting of `model` (or of `names`, in that order): its type, choices,
    default and help from the declaration. A required field gives a required flag. unset=True
    (a client of the server): every flag defaults to None, "leave it to the server", and the
    help names the server's default."""
    fields = declared(model)
    for name in (names if names is not None else fields):
        field, s = fields[name]
        if not s.cli:
            continue
        base = _base(field.annotation)
        kw: dict[str, Any] = {"dest": name}
        default = (defaults or {}).get(name, None if field.is_required() else field.get_default(call_default_factory=True))
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif s.repeat:
            kw["action"] = "append"
        else:
            kw["type"] = _argparse_type(s.parse) if s.parse else (base if base in (int, float, str, Path) else str)
        if typing.get_origin(base) is typing.Literal:
            kw["choices"] = list(typing.get_args(base))
        elif s.choices is not None:
            kw["choices"] = list(s.choices())
        if s.metavar:
            kw["metavar"] = s.metavar
        if unset:
            kw["default"] = None
            text = f"{s.help} (server default: {default})" if default not in ((), None) else s.help
        elif field.is_required() and name not in (defaults or {}):
            kw["required"] = True
            text = s.help
        else:
            kw["default"] = None if s.repeat else default
            text = f"{s.help} (default: {default})" if default not in ((), None) else s.help
        bound = limits(field)
        bound = f"0 or {bound}" if bound and s.zero_is_none else bound
        kw["help"] = f"{text} [{bound}]" if bound else text
        parser.add_argument(flag_of(name, s), *s.aliases, **kw)


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """`parse` whose ValueError argparse prints as it is (not as "invalid value")."""
    def parsed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parsed


def values_from_args(ns: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The declared settings of `model` that `ns` holds, as field values (0 -> None where
    declared, repeated flags as a tuple, an unset repeated flag left to the model's default)."""
    out = {}
    for name, (_field, s) in declared(model).items():
        if not s.cli or not hasattr(ns, name):
            continue
        v = getattr(ns, name)
        if s.repeat:
            if v is None:
                continue
            v = tuple(v)
        if s.zero_is_none and v == 0:
            v = None
        out[name] = v
    return out


def _walk(message: Any, path: str) -> tuple[bool, Any]:
    """(set by the client, value) of a dotted field path in a protobuf message."""
    *parents, leaf = path.split(".")
    for p in parents:
        if not message.HasField(p):
            return False, None
        message = getattr(message, p)
    return message.HasField(leaf), getattr(message, leaf)


def values_from_message(message: Any, model: type[BaseModel]) -> dict[str, Any]:
    """The declared settings that a request message sets (proto3 `optional` fields the client
    set; unset ones keep the model's defaults)."""
    out = {}
    for name, (_field, s) in declared(model).items():
        if s.proto is None:
            continue
        present, value = _walk(message, s.proto)
        if present:
            out[name] = None if s.zero_is_none and value == 0 else value
    return out


def set_message_values(message: Any, values: dict[str, Any], model: type[BaseModel]) -> None:
    """Set each declared proto field of `message` that `values` gives (None: left unset, so the
    server applies its default). The client's side of values_from_message."""
    for name, path in proto_paths(model).items():
        value = values.get(name)
        if value is None:
            continue
        *parents, leaf = path.split(".")
        target = message
        for p in parents:
            target = getattr(target, p)
        setattr(target, leaf, value)


def proto_paths(model: type[BaseModel]) -> dict[str, str]:
    """field name -> proto path, for every declared setting with one."""
    return {name: s.proto for name, (_f, s) in declared(model).items() if s.proto}
