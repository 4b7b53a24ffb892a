"""Configuration: one TOML file loaded into frozen, typed objects (see ``schema``)."""

from secureconnect.config.loader import ConfigError, load_config, parse_override
from secureconnect.config.render import (
    render_effective,
    render_example,
    render_sections,
    toml_value,
)
from secureconnect.config.schema import (
    Config,
    GeneralConfig,
    SignalConfig,
    StunConfig,
    TlsConfig,
    TurnConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "GeneralConfig",
    "SignalConfig",
    "StunConfig",
    "TlsConfig",
    "TurnConfig",
    "load_config",
    "parse_override",
    "render_effective",
    "render_example",
    "render_sections",
    "toml_value",
]
