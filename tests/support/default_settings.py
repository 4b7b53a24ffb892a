"""The STUN responder's and the signaling hub's and routes' settings as the schema's defaults make
them, with a test's changes (on pytest's pythonpath as ``default_settings``).

Each goes through the one mapping in ``runtime`` (as ``turn_core_driver.settings`` does for the
TURN core), so a test runs the component a user runs with an empty config file, not one built
from defaults of its own that could drift from ``config/schema.py``.
"""

from __future__ import annotations

import dataclasses

from secureconnect.config import SignalConfig, StunConfig
from secureconnect.runtime import http_settings as map_http_settings
from secureconnect.runtime import hub_settings as map_hub_settings
from secureconnect.runtime import responder_config as map_responder_config
from secureconnect.signal.http import HttpSettings
from secureconnect.signal.hub import HubSettings
from secureconnect.stun import ResponderConfig


def responder_config(**changes: object) -> ResponderConfig:
    """``runtime.responder_config`` of the default ``[stun]``, with ``changes``."""
    return dataclasses.replace(map_responder_config(StunConfig()), **changes)  # type: ignore[arg-type]


def hub_settings(**changes: object) -> HubSettings:
    """``runtime.hub_settings`` of the default ``[signal]``, with ``changes``."""
    return dataclasses.replace(map_hub_settings(SignalConfig()), **changes)  # type: ignore[arg-type]


def http_settings(**changes: object) -> HttpSettings:
    """``runtime.http_settings`` of the default ``[signal]``, with ``changes``."""
    return dataclasses.replace(map_http_settings(SignalConfig()), **changes)  # type: ignore[arg-type]
