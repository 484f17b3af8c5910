"""Typed, validated access to one section of params.yaml.

Each stage declares its params as a frozen dataclass and reads only its own section; unknown keys,
missing keys and values of the wrong type or range fail with a message naming `section.key`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from stages.core.errors import PipelineError

PARAMS_FILE = Path("params.yaml")
T = TypeVar("T")


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: {_yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: expected a mapping of sections at the top level")
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, on one line: `line 3, column 5: not valid YAML (expected ',' or ']' ...)`."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}not valid YAML ({' '.join(str(problem).split())})"


def load_section(cls: type[T], section: str, path: str | Path = PARAMS_FILE) -> T:
    """Read `section` of params.yaml into the dataclass `cls`."""
    params = read_params(path)
    if section not in params:
        raise PipelineError(f"{path}: section '{section}' is missing")
    return from_mapping(cls, params[section], section)


def from_mapping(cls: type[T], raw: object, section: str) -> T:
    if not isinstance(raw, dict):
        raise PipelineError(f"params: '{section}' must be a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise PipelineError(
            f"params: {section}.{unknown[0]} is not a known parameter (known: {', '.join(fields)})"
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{section}.{name}"
        if name not in raw:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise PipelineError(f"params: {key} is missing")
            continue
        values[name] = _coerce(raw[name], hints[name], key)
    instance = cls(**values)
    check = getattr(instance, "validate", None)
    if check is not None:
        check(section)
    return instance


def _coerce(value: object, hint: Any, key: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(value, option, key)
            except PipelineError as error:
                errors.append(str(error))
        raise PipelineError(errors[0])
    if origin is Literal:
        if value not in args:
            raise PipelineError(f"params: {key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise PipelineError(f"params: {key} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(element, item, f"{key}[{i}]") for i, element in enumerate(value))
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise PipelineError(f"params: {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PipelineError(f"params: {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PipelineError(f"params: {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PipelineError(f"params: {key} must be a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, key)
    raise TypeError(f"unsupported params type {hint!r} for {key}")


def require(condition: bool, key: str, rule: str, value: object) -> None:
    """Range check used by the params dataclasses' validate()."""
    if not condition:
        raise PipelineError(f"params: {key} {rule}, got {value!r}")
