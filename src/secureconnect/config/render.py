"""Render configuration as TOML: the commented example that ships, the effective config, and
configs that other commands write (``init``, the NAT lab).

The one writer of TOML values is :func:`toml_value` (the scalar and array types the schema uses);
:func:`render_sections` writes plain ``[section]`` tables of them. The example and the effective
config walk the schema, so every key appears with its description and default, and secrets are
masked in the effective config (``secureconnect check-config``).

Why our own writer and not a library. Reading is the standard library's ``tomllib``; writing
was weighed against the two maintained writers:

* tomli-w (about 230 lines, no dependencies) writes a whole document from a dict and cannot write
  comments. The shipped example is nothing but comments (each key commented out at its default
  under its description), and init's and the NAT lab's files open with one; it would replace only
  the value formatting below, which it does not offer on its own (only ``dumps`` of a document).
* tomlkit writes comments, but it is a style-preserving document model (about 6,000 lines) built
  for editing files people wrote. We only ever write fresh files from the schema, and every
  runtime dependency is one more thing to ship, audit and keep working on the appliance.

What we need is small: basic strings, integers, floats, booleans and arrays of them, under bare
keys and ``[section]`` headers. That is the code below, and tests/config/test_toml_writer.py checks
with Hypothesis that everything it writes (quotes, backslashes, control characters, astral
characters, huge, negative and non-finite floats, arrays, awkward key names) reads back through
``tomllib`` as the value it was given, so the writer cannot drift from the reader.
"""

from __future__ import annotations

import dataclasses
import re
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
    """TOML for the scalar and array types the schema uses: ``bool``, ``int``, ``float``, ``str``
    and tuples or lists of them (written as arrays). Anything else is a ``TypeError``: a value
    the loader would read back as another type must not be written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same float, and TOML's spelling of
        # it: "1e+300", "1e-05", "-0.0", "inf", "-inf" and "nan" are TOML floats as they stand.
        return repr(value)
    if isinstance(value, str):
        return _basic_string(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__} {value!r}")


#: TOML 1.0 basic strings: the characters that must be escaped, and their short escapes.
_MUST_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')
#: what a TOML comment cannot hold: control characters other than tab
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04X}"


def _basic_string(text: str) -> str:
    """``text`` as a TOML basic string: quote, backslash and control characters escaped, every
    other character (astral ones too) written as itself in the UTF-8 file. A lone surrogate (a
    file name that was not UTF-8) has no TOML spelling: ``ValueError``."""
    if _SURROGATE.search(text):
        raise ValueError(f"{text!r} has a lone surrogate: TOML holds Unicode scalar values only")
    return '"' + _MUST_ESCAPE.sub(_escape, text) + '"'


def _key(name: str) -> str:
    """A key or table name: bare when TOML allows it, else quoted."""
    return name if _BARE_KEY.fullmatch(name) else _basic_string(name)


def _comment(line: str) -> str:
    """One comment line; TOML allows no control character in a comment but tab."""
    if _CONTROL.search(line):
        raise ValueError(f"{line!r} has a control character: not allowed in a TOML comment")
    return f"# {line}" if line else "#"


def render_sections(sections: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """``[section]`` tables of ``key = value`` lines, after an optional comment ``header``."""
    lines = [_comment(line) for line in header.splitlines()]
    for name, values in sections.items():
        if lines:
            lines.append("")
        lines.append(f"[{_key(name)}]")
        lines += [f"{_key(key)} = {toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
