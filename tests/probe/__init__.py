"""Tests of ``secureconnect probe`` (a package only so that its conftest has a module name of
its own for mypy; nothing imports it)."""
