"""The log format: one line per event, whatever a client put in a field (a user name with a
CR or an escape sequence must not start a line of its own or paint the operator's terminal)."""

from __future__ import annotations

import json
import logging

import pytest

from secureconnect.logs import _Formatter, fields


def formatted(style: str, **values: object) -> str:
    record = logging.LogRecord("secureconnect.test", logging.INFO, __file__, 1, "event", (), None)
    record.__dict__.update(fields(**values))
    return _Formatter(style).format(record)


@pytest.mark.parametrize("user", ["a b", 'a"b', "a=b", "a\nb", "a\rb", "a\x1b[31mb", "a\x00b", ""])
def test_a_field_that_could_be_read_as_more_is_quoted(user: str) -> None:
    line = formatted("kv", user=user)
    assert line.isprintable()
    assert line.endswith(f"user={json.dumps(user)}")


def test_a_plain_field_is_left_as_it_is() -> None:
    assert formatted("kv", user="carol", seconds=4.0).endswith("user=carol seconds=4.0")


def test_json_lines_carry_the_fields() -> None:
    line = formatted("json", user="a\rb")
    assert line.isprintable()
    assert json.loads(line)["user"] == "a\rb"
