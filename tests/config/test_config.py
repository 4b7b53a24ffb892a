"""Config loading: defaults, errors naming file and dotted key, overrides, the shipped example."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from secureconnect.cli import main
from secureconnect.config import (
    Config,
    ConfigError,
    load_config,
    parse_override,
    render_effective,
    render_example,
    render_sections,
)
from secureconnect.secretfiles import load_turn_secrets
from secureconnect.statedir import resolve_secret_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sc.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_and_empty_file_give_the_defaults(tmp_path: Path) -> None:
    assert load_config(None) == Config()
    assert load_config(write(tmp_path, "")) == Config()
    assert Config().stun.listen == ("127.0.0.1",)  # loopback-safe embedded default
    assert Config().stun.port == 3478
    assert Config().stun.tls_port == 5349


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[bogus]\nx = 1\n", "bogus", "unknown section"),
        ("[stun]\nprot = 1\n", "stun.prot", "unknown key"),
        ("[stun]\nport = 'x'\n", "stun.port", "whole number"),
        ("[stun]\nport = 70000\n", "stun.port", "port number"),
        ("[stun]\nudp = 1\n", "stun.udp", "true or false"),
        ("[stun]\nlisten = '127.0.0.1'\n", "stun.listen", "list of strings"),
        ("[stun]\nlisten = ['localhost']\n", "stun.listen", "not an IP address"),
        ("[general]\nlog_level = 'loud'\n", "general.log_level", "one of"),
        ("[general]\ndrain_timeout = 0\n", "general.drain_timeout", "greater than 0"),
        ("stun = 3\n", "stun", "must be a table"),
        ("[tls]\ncert_file = 'c.pem'\n", "tls.key_file", "go together"),
        ("[stun]\nalternate_address = '127.0.0.1'\n", "stun.alternate_address", "differ"),
        ("[stun]\nalternate_address = '::2'\n", "stun.alternate_address", "family"),
        (
            "[stun]\nalternate_address = '127.0.0.2'\nalternate_port = 3478\n",
            "stun.alternate_port",
            "differ",
        ),
        (
            "[stun]\nalternate_address = '127.0.0.2'\nlisten = ['127.0.0.1', '::1']\n",
            "stun.listen",
            "exactly one",
        ),
        (
            "[stun]\nalternate_address = '127.0.0.2'\nlisten = ['0.0.0.0']\n",
            "stun.listen",
            "not a wildcard",
        ),
        ("[stun]\nalternate_address = '0.0.0.0'\n", "stun.alternate_address", "not a wildcard"),
        ("[stun]\nudp = false\ntcp = false\ntls = false\n", "stun.udp", "all off"),
        (
            "[turn]\nrelay_port_min = 60000\nrelay_port_max = 50000\n",
            "turn.relay_port_min",
            "upside down",
        ),
        ("[turn]\nrelay_port_min = 80\n", "turn.relay_port_min", "0-1023"),
        ("[turn]\nusers = ['nocolon']\n", "turn.users", "user:password"),
        ("[turn]\nusers = ['1700000000:pw']\n", "turn.users", "REST credential expiry"),
        ("[turn]\nallowed_peers = ['10.0.0.0/33']\n", "turn.allowed_peers", "CIDR"),
        ("[turn]\nloopback_peers = 'maybe'\n", "turn.loopback_peers", "one of"),
        (
            "[turn]\nrelay_addresses = ['127.0.0.1', '127.0.0.2']\n",
            "turn.relay_addresses",
            "one address per family",
        ),
        ("[stun]\nalternate_address = '127.0.0.2'\n", "stun.port", "own port"),
        ("[turn]\ndefault_lifetime = 7200\n", "turn.default_lifetime", "max_lifetime"),
        ("[turn]\nlisten = ['0.0.0.0']\n", "turn.external_addresses", "wildcard"),
        ("[turn]\nallowed_peers = ['10.0.0.1/8']\n", "turn.allowed_peers", "host bits"),
        ("[signal]\nice_ttl = 864000\n", "signal.ice_ttl", "7 days"),
        ("[turn]\nmetrics_users = -1\n", "turn.metrics_users", "no per-user series"),
        ("[turn]\nmetrics_users = 101\n", "turn.metrics_users", "to 100"),
        ("[turn]\ntls_alternate_domain = 'a b'\n", "turn.tls_alternate_domain", "domain name"),
        ("[turn]\ntls_alternate_domain = '-x.net'\n", "turn.tls_alternate_domain", "domain"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    assert fragment in caught.value.message
    assert str(caught.value).startswith(f"{path}: {key}: ")


def test_unreadable_and_invalid_toml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[stun\n"))


def test_overrides_are_checked_like_the_file(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "[stun]\nport = 4000\n"), dict([parse_override("stun.port=4001")])
    )
    assert config.stun.port == 4001
    assert parse_override("general.log_level=debug") == ("general.log_level", "debug")
    assert parse_override("stun.listen=['::1']") == ("stun.listen", ["::1"])
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"stun.port": 0.5})
    assert caught.value.key == "stun.port"
    assert caught.value.source == "<defaults>"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("no-equals-sign")


def test_shipped_example_is_the_rendered_schema_and_loads() -> None:
    shipped = resources.files("secureconnect.config").joinpath("example.toml").read_text("utf-8")
    assert shipped == render_example(), (
        "regenerate: secureconnect example-config > src/.../example.toml"
    )
    assert load_config(None) == Config()
    # Uncommenting every `# key = value` line yields valid TOML that loads to the defaults, so the
    # documented defaults are the real ones and have the right types.
    uncommented = re.sub(r"^# (\w+ = .*)$", r"\1", shipped, flags=re.MULTILINE)
    tree = tomllib.loads(uncommented)
    assert set(tree) == {"general", "tls", "stun", "turn", "signal"}
    for section, keys in tree.items():
        for key, value in keys.items():
            loaded = getattr(getattr(Config(), section), key)
            assert (list(loaded) if isinstance(loaded, tuple) else loaded) == value


def test_effective_config_masks_secrets_and_round_trips(tmp_path: Path) -> None:
    config = load_config(None, {"turn.secrets": ["hunter2", "older"], "stun.port": 4000})
    text = render_effective(config)
    assert "hunter2" not in text
    assert "older" not in text
    assert 'secrets = ["********", "********"]' in text
    again = load_config(
        write(tmp_path, text.replace('"********", "********"', '"hunter2", "older"'))
    )
    assert again == config


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "[stunn]\nport = 1\n")
    assert main(["check-config", str(bad)]) == 2
    assert "stunn: unknown section" in capsys.readouterr().err
    good = write(tmp_path, "[turn]\nsecrets = ['s3cret']\n")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert "[stun]" in out


def test_secret_files_come_from_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "turn-secret").write_text("# rotated weekly\nnewest\n\nolder\n", encoding="utf-8")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert resolve_secret_file("turn-secret", tmp_path, env) == creds / "turn-secret"
    assert resolve_secret_file("other", tmp_path, env) == tmp_path / "other"
    assert resolve_secret_file("/abs/x", tmp_path, env) == Path("/abs/x")
    path = write(
        tmp_path, f"[turn]\nsecrets = ['inline']\nsecret_file = '{creds / 'turn-secret'}'\n"
    )
    assert load_turn_secrets(load_config(path), path, tmp_path / "state") == (
        "inline",
        "newest",
        "older",
    )


def test_missing_secret_file_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[turn]\nsecret_file = 'nope'\n")
    with pytest.raises(ConfigError) as caught:
        load_turn_secrets(load_config(path), path, tmp_path / "state")
    assert caught.value.key == "turn.secret_file"


def test_secrets_stay_out_of_reprs() -> None:
    config = load_config(
        None,
        {
            "turn.secrets": ["TOPSECRET"],
            "turn.users": ["bob:pw1"],
            "signal.token_secrets": ["ROOMSECRET"],
        },
    )
    text = repr(config)
    for secret in ("TOPSECRET", "pw1", "ROOMSECRET"):
        assert secret not in text


def test_render_sections_writes_toml_that_reads_back() -> None:
    """The one TOML writer (init, the NAT lab and check-config use its toml_value)."""
    sections = {
        "general": {"state_dir": '/var/lib/a "quoted" dir', "drain_timeout": 0.5},
        "turn": {"listen": ["127.0.0.1", "::1"], "port": 3478, "tls": False},
    }
    text = render_sections(sections, header="line one\n\nline three")
    assert text.startswith("# line one\n#\n# line three\n")
    assert tomllib.loads(text) == sections
