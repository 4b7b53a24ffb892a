"""``secureconnect probe`` against our own appliance on loopback: every transport ok, a wrong
secret diagnosed, an expired certificate diagnosed, RFC 5780 from the STUN component, and the
usage errors (exit status 2).

Our appliance cannot be made an open relay (TURN always authenticates: there is no setting for
it), so the open-relay diagnosis is shown against coturn with ``no-auth`` in
test_probe_coturn.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from appliance import free_port, run_appliance

from secureconnect.probe.transport import UdpChannel
from secureconnect.probe.turnsession import TurnSession
from secureconnect.probe.wire import Credential
from secureconnect.stun import (
    AttrType,
    MessageClass,
    Method,
    decode_message_untrusted,
    encode_message,
    new_transaction_id,
)
from secureconnect.testing.appliance import Appliance, start_appliance

pytestmark = [pytest.mark.timeout(60)]

TURN_CHECKS = ("binding", "open-relay", "credential", "relayed-address", "relay", "cleanup")


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Appliance]:
    """One appliance (STUN, TURN over UDP/TCP/TLS) for the module's tests."""
    with start_appliance(tmp_path_factory.mktemp("probe-appliance")) as running:
        yield running


@pytest.fixture
def secret_file(ours: Appliance, tmp_path: Path) -> Path:
    path = tmp_path / "turn-secret"
    path.write_text(f"# the appliance's generated secret\n{ours.turn_secret}\n")
    return path


def test_every_transport_is_ok(ours: Appliance, secret_file: Path, run_probe: Any) -> None:
    urls = [ours.stun_url, *ours.turn_urls]
    run = run_probe(*urls, "--secret-file", secret_file, "--cafile", ours.cafile, "--json")
    assert run.status == 0, run.out + run.err
    document = run.document()
    assert document["ok"] is True
    assert [u["url"] for u in document["urls"]] == urls
    assert [u["transport"] for u in document["urls"]] == ["udp", "udp", "tcp", "tls"]
    for index in (1, 2, 3):
        statuses = run.statuses(index)
        assert all(statuses[cid] == "ok" for cid in TURN_CHECKS), statuses
        checks = run.checks(index)
        relayed = checks["credential"]["details"]["relayed_address"]
        assert relayed.startswith("127.0.0.1:")
        assert checks["relayed-address"]["details"]["relayed_address"] == relayed
        assert checks["relay"]["details"]["relay_rtt_ms"] > 0
        assert checks["binding"]["details"]["mapped_address"].startswith("127.0.0.1:")
    assert run.statuses(2)["connect"] == "ok"
    tls = run.checks(3)["tls-certificate"]
    assert tls["status"] == "ok"
    assert tls["details"]["matches_host"] is True
    assert "127.0.0.1" in tls["details"]["ip_addresses"]
    assert tls["details"]["days_left"] > 300
    # RFC 5780 is off on the shared TURN port: the NAT checks say so instead of failing.
    assert run.statuses(0) == {"binding": "ok", "nat-mapping": "skip", "nat-filtering": "skip"}
    # Every allocation the probe made is gone again, deleted by its Refresh(lifetime 0).
    metrics = ours.metrics()
    assert metrics["turn_allocations"] == 0, metrics
    assert metrics["turn_allocations_created_total"] >= 6
    assert metrics["turn_allocations_deleted_total"] == metrics["turn_allocations_created_total"]


def test_human_output(ours: Appliance, secret_file: Path, run_probe: Any) -> None:
    run = run_probe(ours.turn_urls[0], "--secret-file", secret_file)
    assert run.status == 0, run.out
    lines = run.out.splitlines()
    assert lines[0].startswith(f"{ours.turn_urls[0]}  →  127.0.0.1:")
    for cid in TURN_CHECKS:
        assert any(line.startswith(f"  ok    {cid} ") for line in lines), (cid, run.out)
    assert lines[-1] == "1 URL probed: all ok"


def test_static_username_and_password(ours: Appliance, run_probe: Any, tmp_path: Path) -> None:
    """--username/--password: a REST credential minted elsewhere is a long-term credential."""
    credential = ours.credential("static")
    run = run_probe(
        ours.turn_urls[1],
        "--username",
        credential["username"],
        "--password",
        credential["credential"],
        "--json",
    )
    assert run.status == 0, run.out
    assert run.statuses()["credential"] == "ok"


def test_wrong_secret_is_a_rejected_credential(
    ours: Appliance, run_probe: Any, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret\n")
    run = run_probe(ours.turn_urls[0], "--secret-file", wrong, "--json")
    assert run.status == 1
    checks = run.checks()
    assert checks["open-relay"]["status"] == "ok"
    credential = checks["credential"]
    assert credential["status"] == "fail"
    assert "credential rejected" in credential["summary"]
    assert "wrong secret/password, or clock skew" in credential["summary"]
    assert "'secureconnect'" in credential["summary"]  # the realm
    assert "turn.secrets" in credential["fix"]
    assert {checks[c]["status"] for c in ("relayed-address", "relay", "cleanup")} == {"skip"}


def test_without_credential_the_turn_checks_are_skipped(ours: Appliance, run_probe: Any) -> None:
    run = run_probe(ours.turn_urls[0], "--json")
    assert run.status == 0
    statuses = run.statuses()
    assert statuses["open-relay"] == "ok"
    assert statuses["credential"] == statuses["relay"] == "skip"


def test_self_signed_without_cafile_fails_verification(
    ours: Appliance, secret_file: Path, run_probe: Any
) -> None:
    run = run_probe(ours.turn_urls[2], "--secret-file", secret_file, "--json")
    assert run.status == 1
    checks = run.checks()
    assert checks["tls-certificate"]["status"] == "fail"
    assert "self-signed" in checks["tls-certificate"]["summary"]
    assert checks["binding"]["status"] == "skip"
    assert "--insecure" in checks["binding"]["summary"]
    # --insecure goes on past it, and still reports the failure.
    run = run_probe(ours.turn_urls[2], "--secret-file", secret_file, "--insecure", "--json")
    assert run.status == 1
    statuses = run.statuses()
    assert statuses["tls-certificate"] == "fail"
    assert all(statuses[cid] == "ok" for cid in TURN_CHECKS), statuses


def test_expired_certificate(make_certificate: Any, tmp_path: Path, run_probe: Any) -> None:
    expired = make_certificate("expired.test", valid_from=-60, valid_until=-3)
    settings = (f"tls.cert_file={expired.cert}", f"tls.key_file={expired.key}")
    with start_appliance(tmp_path / "expired", settings) as running:
        url = running.turn_urls[2]
        run = run_probe(url, "--cafile", expired.cert, "--json")
        text = run_probe(url, "--cafile", expired.cert)
    assert run.status == text.status == 1
    check = run.checks()["tls-certificate"]
    assert check["status"] == "fail"
    assert "EXPIRED" in check["summary"]
    assert "3 days ago" in check["summary"]
    assert check["details"]["days_left"] < 0
    assert check["details"]["verify_error"] == "certificate has expired"
    assert "renew" in check["fix"]
    assert "FAIL  tls-certificate  certificate EXPIRED on" in text.out


def test_rfc5780_no_nat_from_loopback(tmp_path: Path, run_probe: Any) -> None:
    """Our STUN component with an alternate address (127.0.0.2, a second loopback address on
    Linux): from loopback there is no NAT, and answers from the other address arrive."""
    port, alternate = free_port(), free_port()
    settings = [
        f"stun.port={port}",
        "stun.alternate_address=127.0.0.2",
        f"stun.alternate_port={alternate}",
        "stun.tls=false",
    ]
    with run_appliance(tmp_path, "stun", state_dir=tmp_path / "state", settings=settings):
        run = run_probe(f"stun:127.0.0.1:{port}", "--json")
    assert run.status == 0, run.out
    checks = run.checks()
    assert checks["binding"]["details"]["other_address"] == f"127.0.0.2:{alternate}"
    mapping, filtering = checks["nat-mapping"], checks["nat-filtering"]
    assert (mapping["status"], mapping["details"]["verdict"]) == ("ok", "no-nat")
    assert "no NAT" in mapping["summary"]
    assert "endpoint-independent" in mapping["summary"]
    assert (filtering["status"], filtering["details"]["verdict"]) == ("ok", "endpoint-independent")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["turn://127.0.0.1"], "without '//'"),
        (["turn:127.0.0.1:99999"], "port"),
        (["turns:127.0.0.1?transport=udp"], "DTLS"),
        (["turn:127.0.0.1", "--secret-file", "/nonexistent/secret"], "cannot read"),
        (["turn:127.0.0.1", "--username", "u"], "go together"),
        (["turn:127.0.0.1", "--timeout", "0"], "--timeout"),
        (["turn:127.0.0.1", "--cafile", "/nonexistent/ca.pem"], "--cafile"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, run_probe: Any) -> None:
    run = run_probe(*args)
    assert run.status == 2
    assert message in run.err
    assert run.out == ""


def test_empty_or_conflicting_secret_is_a_usage_error(tmp_path: Path, run_probe: Any) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing but a comment\n\n")
    assert run_probe("turn:127.0.0.1", "--secret-file", empty).status == 2
    both = run_probe("turn:127.0.0.1", "--secret-file", empty, "--username", "u", "--password", "p")
    assert both.status == 2
    assert "not both" in both.err
    assert run_probe().status == 2  # argparse: a URL is required


def test_unreachable_server_fails_within_the_timeout(run_probe: Any) -> None:
    port = free_port()  # nothing listens there
    run = run_probe(
        f"turn:127.0.0.1:{port}?transport=tcp", f"stun:127.0.0.1:{port}", "--json", "--timeout", "1"
    )
    assert run.status == 1
    assert run.statuses(0)["connect"] == "fail"
    assert "refused" in run.checks(0)["connect"]["summary"]
    binding = run.checks(1)["binding"]
    assert binding["status"] == "fail"
    assert "ICMP port unreachable" in binding["summary"]
    assert json.loads(run.out)["exit_status"] == 1


def test_a_stale_nonce_is_retried_with_the_new_one(ours: Appliance) -> None:
    """RFC 8489 §9.2.5 against the real server: a request signed with a nonce the server never
    issued gets 438 Stale Nonce with a fresh NONCE, and the session retries with that."""
    credential = ours.credential("stale")
    session = TurnSession(
        UdpChannel(("127.0.0.1", ours.ports.turn)),
        Credential(credential["username"], credential["credential"]),
        5.0,
    )
    assert session.auth is not None
    stale = encode_message(
        Method.ALLOCATE,
        MessageClass.ERROR,
        new_transaction_id(),
        [(AttrType.REALM, b"secureconnect"), (AttrType.NONCE, b"never-issued-nonce")],
    )
    assert session.auth.learn(decode_message_untrusted(stale))
    try:
        exchange, allocation = session.allocate()
        assert allocation is not None, exchange.reply
        assert session.stale_retries == 1
        assert session.auth.nonce != b"never-issued-nonce"
        assert allocation.integrity == "valid"
    finally:
        session.delete_allocation()
        session.close()
