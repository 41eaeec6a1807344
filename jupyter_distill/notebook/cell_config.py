"""A ``%%distill`` cell into a validated :class:`DistillConfig`: body, kernel ``$variables``, defaults, flags.

The body is parsed by ``DistillConfig.from_yaml(body, **flags)``, so a YAML error names the line
and the key, and flags override the body. ``key: $name`` takes the value of a kernel variable
(``$name.attr`` follows attributes; ``$$`` writes a literal ``$``), resolved here before
validation so a missing variable is reported with its key and line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jupyter_distill.core.config import DistillConfig, parse_yaml_mapping
from jupyter_distill.core.errors import ConfigError

_VARIABLE = re.compile(r"^\$([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


def variable_name(value: str) -> str | None:
    """``"$rows"`` -> ``"rows"`` (``$a.b`` kept whole); None when ``value`` is not a variable reference."""
    match = _VARIABLE.match(value.strip())
    return match.group(1) if match else None


def lookup(expression: str, key: str, line: int | None, namespace: Mapping[str, Any]) -> Any:
    """The value of ``$expression`` in the kernel's ``namespace``; a ``ConfigError`` naming ``key`` otherwise."""
    root, *attrs = expression.split(".")
    where = f" (line {line})" if line else ""
    if root not in namespace:
        raise ConfigError(
            f"'{key}'{where} refers to the kernel variable ${expression}, but `{root}` is not defined. "
            f"Fix: run the cell that defines `{root}` first, or write the value itself (`$$` for a literal '$').",
            field=key,
            value=f"${expression}",
        )
    value = namespace[root]
    for attr in attrs:
        if not hasattr(value, attr):
            raise ConfigError(
                f"'{key}'{where}: ${expression}: `{type(value).__name__}` object has no attribute {attr!r}. "
                "Fix: check the name.",
                field=key,
                value=f"${expression}",
            )
        value = getattr(value, attr)
    if value is None:
        raise ConfigError(
            f"'{key}'{where}: the kernel variable ${expression} is None. Fix: assign it a value first, or "
            f"remove the '{key}' line to use the default.",
            field=key,
            value=f"${expression}",
        )
    return value


def scan_body(body: str, namespace: Mapping[str, Any]) -> tuple[set[str], dict[str, Any]]:
    """The body's keys and its ``$variable`` values resolved from the kernel.

    A body with YAML errors returns nothing here: ``from_yaml`` reports those with the line.
    """
    try:
        data, lines = parse_yaml_mapping(body)
    except ConfigError:
        return set(), {}
    variables: dict[str, Any] = {}
    for key, value in data.items():
        if key not in DistillConfig.model_fields or not isinstance(value, str):
            continue
        if value.startswith("$$"):
            variables[key] = value[1:]
            continue
        expression = variable_name(value)
        if expression is not None:
            variables[key] = lookup(expression, str(key), lines.get(key), namespace)
    return {str(k) for k in data}, variables


def build_config(
    body: str,
    overrides: dict[str, Any],
    name: str | None = None,
    *,
    defaults: Mapping[str, Any],
    namespace: Mapping[str, Any],
) -> DistillConfig:
    """Body + kernel variables + defaults + flags -> a validated DistillConfig.

    Precedence, lowest first: ``defaults`` (the magic's teacher, student, workdir), the body,
    ``$variables`` in the body, the flags (``overrides``), and NAME.
    """
    body_keys, variables = scan_body(body, namespace)
    extra: dict[str, Any] = {
        key: value for key, value in defaults.items() if key not in body_keys and key not in overrides
    }
    extra.update(variables)
    extra.update(overrides)
    if name is not None:
        extra["name"] = name
    return DistillConfig.from_yaml(body, **extra)


__all__ = ["build_config", "lookup", "scan_body", "variable_name"]
