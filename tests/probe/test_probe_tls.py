"""Certificate facts and the ``tls-certificate`` verdict (pure), and the report's two
renderings; certificates are made here with ``cryptography``."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from secureconnect.probe import Check, Status, UrlReport, render_json, render_text
from secureconnect.probe.tlsinfo import (
    CertificateFacts,
    certificate_facts,
    host_matches,
    judge_certificate,
)

NOW = datetime.datetime.now(datetime.UTC)


def facts_of(make_certificate: Any, **kwargs: Any) -> CertificateFacts:
    from cryptography import x509  # noqa: PLC0415 - only to turn PEM into DER
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    files = make_certificate(**kwargs)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    return certificate_facts(cert.public_bytes(serialization.Encoding.DER))


def test_facts(make_certificate: Any) -> None:
    facts = facts_of(make_certificate, name="turn.test", dns=("turn.test",), ips=("192.0.2.1",))
    assert facts.common_name == "turn.test"
    assert facts.dns_names == ("turn.test",)
    assert facts.ip_addresses == ("192.0.2.1",)
    assert facts.self_signed
    assert 364 < facts.days_left(NOW) < 366


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("turn.example.com", True),
        ("TURN.example.com.", True),
        ("a.wild.example.com", True),  # RFC 6125 §6.4.3: * is one whole label
        ("a.b.wild.example.com", False),
        ("wild.example.com", False),
        ("example.com", False),
        ("192.0.2.1", True),
        ("192.0.2.2", False),
        ("2001:db8::1", True),
        ("2001:0db8::0001", True),
    ],
)
def test_host_matching(make_certificate: Any, host: str, matches: bool) -> None:
    facts = facts_of(
        make_certificate,
        dns=("turn.example.com", "*.wild.example.com"),
        ips=("192.0.2.1", "2001:db8::1"),
    )
    assert host_matches(host, facts) is matches


def test_the_common_name_alone_names_nothing(make_certificate: Any) -> None:
    facts = facts_of(make_certificate, name="cn-only.test", ips=())
    assert not host_matches("cn-only.test", facts)


@pytest.mark.parametrize(
    ("kwargs", "error", "status", "words"),
    [
        ({}, None, Status.OK, "verified, matches 127.0.0.1"),
        ({"valid_until": 5}, None, Status.WARN, "expires in 5 days"),
        ({"valid_until": -2}, "certificate has expired", Status.FAIL, "EXPIRED"),
        ({"valid_from": 3}, "certificate is not yet valid", Status.FAIL, "not valid before"),
        ({"ips": ("127.0.0.2",)}, "Hostname mismatch", Status.FAIL, "does not name 127.0.0.1"),
        ({}, "self-signed certificate", Status.FAIL, "verification failed: self-signed"),
    ],
)
def test_judgement(
    make_certificate: Any, kwargs: dict[str, Any], error: str | None, status: Status, words: str
) -> None:
    facts = facts_of(make_certificate, **kwargs)
    check = judge_certificate(facts, "127.0.0.1", error, NOW, handshake="TLSv1.3")
    assert check.status is status, check
    assert words in check.summary
    assert (check.fix is None) == (status is Status.OK)
    assert check.details["verified"] is (error is None)


def test_no_certificate_at_all() -> None:
    check = judge_certificate(None, "127.0.0.1", "handshake failure", NOW)
    assert check.status is Status.FAIL
    assert "could not read" in check.summary


def reports() -> list[UrlReport]:
    good = UrlReport("turn:192.0.2.1", "udp", "192.0.2.1:3478")
    good.add(Check("binding", Status.OK, "reachable", details={"rtt_ms": 1.5}))
    good.add(Check("relayed-address", Status.WARN, "hmm " * 40, "do this-and-that"))
    bad = UrlReport("turns:turn.test", "tls", None)
    bad.add(Check("resolve", Status.FAIL, "cannot resolve turn.test", "check DNS"))
    bad.skip_rest(("binding",), "the name did not resolve")
    return [good, bad]


def test_text_rendering() -> None:
    text = render_text(reports())
    assert "turn:192.0.2.1  →  192.0.2.1:3478 over udp" in text
    assert "  ok    binding          reachable" in text
    assert "  warn  relayed-address  hmm" in text
    assert "fix: do this-and-that" in text  # not broken at the hyphen
    assert "  FAIL  resolve" in text
    assert "=> ok, with 1 warning" in text
    assert "=> FAIL: 1 check failed" in text
    assert text.endswith("2 URLs probed: 1 with failures\n")
    assert all(len(line) <= 100 for line in text.splitlines())


def test_json_rendering() -> None:
    document = json.loads(render_json(reports(), timeout=2.5))
    assert document["schema"] == 1
    assert (document["ok"], document["exit_status"], document["timeout_s"]) == (False, 1, 2.5)
    first, second = document["urls"]
    assert first["ok"] is True
    assert first["checks"][0] == {
        "id": "binding",
        "status": "ok",
        "summary": "reachable",
        "fix": None,
        "details": {"rtt_ms": 1.5},
    }
    assert second["server"] is None
    assert [c["status"] for c in second["checks"]] == ["fail", "skip"]
