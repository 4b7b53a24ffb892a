"""Render configuration as TOML: the commented example that ships, the effective config, and
configs that other commands write (``init``, the NAT lab).

The one writer of TOML values is :func:`toml_value` (the scalar and array types the schema uses);
:func:`render_sections` writes plain ``[section]`` tables of them. The example and the effective
config walk the schema, so every key appears with its description and default, and secrets are
masked in the effective config (``secureconnect check-config``).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any

from secureconnect.config.schema import SECTION_DOCS, Config

MASK = "********"


def render_example() -> str:
    """The commented example config: every key, commented out, at its default, with its doc."""
    lines = [
        "# SecureConnect configuration. Every key is optional: shown here commented out at its",
        "# default. Generated from secureconnect/config/schema.py"
        " (`secureconnect example-config`).",
    ]
    for section in dataclasses.fields(Config):
        lines += ["", f"# {SECTION_DOCS[section.name]}", f"[{section.name}]"]
        for fld in dataclasses.fields(_default(section)):
            lines.append(f"# {fld.metadata['doc']}")
            lines.append(f"# {fld.name} = {toml_value(_default(fld))}")
    return "\n".join(lines) + "\n"


def render_effective(config: Config) -> str:
    """The config as loaded, every key explicit, secrets replaced by a mask."""
    lines: list[str] = []
    for section in dataclasses.fields(Config):
        obj = getattr(config, section.name)
        if lines:
            lines.append("")
        lines.append(f"[{section.name}]")
        for fld in dataclasses.fields(obj):
            value = getattr(obj, fld.name)
            if fld.metadata.get("secret") and value:
                value = tuple(MASK for _ in value) if isinstance(value, tuple) else MASK
            lines.append(f"{fld.name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def _default(fld: dataclasses.Field[Any]) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    factory = typing.cast("Callable[[], Any]", fld.default_factory)
    return factory()


def toml_value(value: Any) -> str:
    """TOML for the scalar and array types the schema uses (JSON strings are valid TOML
    strings; a list is written like a tuple)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(str(value))


def render_sections(sections: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """``[section]`` tables of ``key = value`` lines, after an optional comment ``header``."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name, values in sections.items():
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
