"""The URLs printed at start: each component's builder says what it serves (from what it bound),
and ``service_urls`` only collects them, in start order."""

from __future__ import annotations

from pathlib import Path

from secureconnect.config import load_config
from secureconnect.runtime import build_components, prepare_runtime
from secureconnect.serviceurls import (
    service_urls,
    signal_server_urls,
    stun_server_urls,
    turn_server_urls,
)


def test_stun_lists_listeners_and_primary_udp_but_not_rfc5780_alternates() -> None:
    bound = [
        ("udp", "192.0.2.1", 3478),
        ("udp", "192.0.2.1", 3479),  # the alternate port
        ("udp", "192.0.2.2", 3478),  # the alternate address
        ("tcp", "192.0.2.1", 3478),
        ("tls", "192.0.2.1", 5349),
    ]
    assert stun_server_urls(bound, 3478, ["192.0.2.1"]) == [
        "stun:192.0.2.1:3478",
        "stun:192.0.2.1:3478?transport=tcp",
        "stuns:192.0.2.1:5349",
    ]
    # Port 0: chosen at bind time, so every UDP socket is a primary one.
    assert stun_server_urls([("udp", "::1", 40000)], 0, ["::1"]) == ["stun:[::1]:40000"]


def test_turn_lists_every_socket_then_stun_on_its_udp_ones() -> None:
    bound = [("udp", "::1", 3478), ("tcp", "::1", 3478), ("tls", "::1", 5349)]
    assert turn_server_urls(bound) == [
        "turn:[::1]:3478?transport=udp",
        "turn:[::1]:3478?transport=tcp",
        "turns:[::1]:5349?transport=tcp",
        "stun:[::1]:3478",
    ]


def test_signal_lists_the_websocket_and_the_demo_page() -> None:
    assert signal_server_urls([("tls", "127.0.0.1", 8443)]) == [
        "wss://127.0.0.1:8443/ws",
        "https://127.0.0.1:8443/  (demo page)",
    ]
    assert signal_server_urls([("tcp", "::1", 8080)]) == [
        "ws://[::1]:8080/ws",
        "http://[::1]:8080/  (demo page)",
    ]


def test_built_components_report_what_they_bound_in_start_order(tmp_path: Path) -> None:
    """The builders hand back one URL source per component, read once it has bound (port 0 is
    known only then), so the banner needs no knowledge of the component types."""
    settings = {
        "general.state_dir": str(tmp_path / "state"),
        "stun.tls": False,
        "turn.tls": False,
        "signal.tls": False,
    }
    runtime = prepare_runtime(load_config(None, settings), None, tls=False)
    components = build_components(runtime, ["stun", "turn", "signal"])
    assert [c.name for c in components] == ["stun", "turn", "signal"]
    assert len(runtime.url_sources) == 3
    assert service_urls(runtime.url_sources) == []  # nothing bound yet
    stun, turn, signal = components
    stun.bound[:] = [("udp", "127.0.0.1", 3478)]  # type: ignore[attr-defined]
    turn.bound[:] = [("tcp", "127.0.0.1", 3478)]  # type: ignore[attr-defined]
    signal.bound[:] = [("tcp", "127.0.0.1", 8080)]  # type: ignore[attr-defined]
    assert service_urls(runtime.url_sources) == [
        "stun:127.0.0.1:3478",
        "turn:127.0.0.1:3478?transport=tcp",
        "ws://127.0.0.1:8080/ws",
        "http://127.0.0.1:8080/  (demo page)",
    ]
