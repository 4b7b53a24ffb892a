"""The one TOML writer (``config.toml_value``, ``config.render_sections``) against the one
reader (``tomllib``): whatever a config can hold is written so that it reads back as itself.

Why the project keeps its own writer rather than tomli-w or tomlkit is in the docstring of
``secureconnect.config.render``; these properties are what make that choice safe.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secureconnect.config import Config, render_effective, render_sections, toml_value

#: characters a writer gets wrong: TOML's escapes, every C0 control, DEL, C1, separators TOML
#: takes literally but Python splits lines on, a BOM, astral characters and the last one
TRICKY = [
    '"',
    "\\",
    "'",
    "#",
    "=",
    "[",
    "]",
    *map(chr, range(0x20)),
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
    "é",
    "😀",
    "\U0001d11e",
    "\U0010ffff",
]
#: text as TOML can hold it: Unicode scalar values (no lone surrogates), tricky ones often
texts = st.text(st.sampled_from(TRICKY) | st.characters(codec="utf-8"))
#: TOML integers are 64-bit signed
integers = st.integers(-(2**63), 2**63 - 1)
scalars = st.booleans() | integers | st.floats() | texts
#: arrays as the schema holds them (tuples) and as callers pass them (lists), mixed types too
#: (TOML 1.0 allows them)
arrays = st.lists(scalars, max_size=6) | st.lists(scalars, max_size=6).map(tuple)
values = scalars | arrays


def normal(value: Any) -> Any:
    """``value`` as ``tomllib`` returns it (arrays are lists), floats by their exact identity so
    that nan equals nan and -0.0 differs from 0.0."""
    if isinstance(value, tuple | list):
        return [normal(item) for item in value]
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value.hex())
    return (type(value).__name__, value)


def read_back(text: str) -> Any:
    return tomllib.loads(f"key = {text}")["key"]


@given(values)
def test_every_value_reads_back_as_itself(value: Any) -> None:
    assert normal(read_back(toml_value(value))) == normal(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("", '""'),
        ('say "hi"', r'"say \"hi\""'),
        ("C:\\dir", r'"C:\\dir"'),
        ("a\tb\nc\x00\x7f", r'"a\tb\nc\u0000\u007F"'),
        ("😀é", '"😀é"'),  # written as itself: UTF-8 files, and \ud83d is no TOML escape
        (-1.5e300, "-1.5e+300"),
        (float("-inf"), "-inf"),
        (0, "0"),
        (("a", 1, True), '["a", 1, true]'),
    ],
)
def test_values_are_written_as_toml_spells_them(value: Any, text: str) -> None:
    assert toml_value(value) == text


@pytest.mark.parametrize("value", [None, {"a": 1}, b"bytes", object()])
def test_a_type_toml_would_read_back_as_another_is_refused(value: Any) -> None:
    with pytest.raises(TypeError):
        toml_value(value)


def test_a_lone_surrogate_is_refused() -> None:
    """A path that was not UTF-8 (surrogateescape) has no TOML spelling: refused, not written
    as an escape every reader rejects."""
    with pytest.raises(ValueError, match="surrogate"):
        toml_value("/var/lib/\udcff")


#: names as a caller might give them: bare ones mostly, anything else now and then
names = st.from_regex(r"[A-Za-z0-9_-]+", fullmatch=True) | texts
#: comment text: anything but the control characters TOML refuses in a comment (tab is fine)
header_lines = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc"]) | st.sampled_from(["\t", "#", '"'])
)


@given(
    st.dictionaries(names, st.dictionaries(names, values, max_size=5), max_size=4),
    st.lists(header_lines, max_size=3).map("\n".join),
)
def test_render_sections_reads_back_as_the_same_tables(
    sections: dict[str, dict[str, Any]], header: str
) -> None:
    assert normal_tables(tomllib.loads(render_sections(sections, header))) == normal_tables(
        sections
    )


def normal_tables(tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: {k: normal(v) for k, v in keys.items()} for name, keys in tables.items()}


def test_a_control_character_in_the_header_is_refused() -> None:
    with pytest.raises(ValueError, match="control character"):
        render_sections({}, header="a\x00b")


@given(st.lists(texts, max_size=3).map(tuple), texts)
def test_the_effective_config_reads_back(listen: tuple[str, ...], realm: str) -> None:
    """check-config's output is TOML whatever the strings in it (the loader's checks aside)."""
    config = Config()
    config = replace(config, turn=replace(config.turn, listen=listen, realm=realm))
    turn = tomllib.loads(render_effective(config))["turn"]
    assert (tuple(turn["listen"]), turn["realm"]) == (listen, realm)
