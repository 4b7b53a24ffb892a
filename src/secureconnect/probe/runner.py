"""Probe one URL: every check in order, each bounded by the timeout, into a `UrlReport`.

The order follows what each check needs: the name resolves; the TCP connection opens and, for
``turns:``/``stuns:``, the TLS handshake verifies (`secureconnect.probe.tlsinfo`); a Binding
answers (reachability, RTT, mapped address); for TURN, an unauthenticated Allocate is refused,
the credential is accepted, the relayed address is one peers can reach, data relays between two
allocations, and both are deleted again (`secureconnect.probe.turnchecks`); for a ``stun:`` URL
over UDP whose server offers OTHER-ADDRESS, RFC 5780 mapping and filtering
(`secureconnect.probe.natprobe`). A failure that makes the rest meaningless (no route, a TLS
verification failure without ``--insecure``) records the rest as skipped, saying why.

Resource handling: every socket opened here is closed before `probe_url` returns, and every
allocation made is deleted (Refresh with LIFETIME 0) however a check ends.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from secureconnect.netaddr import Address, format_address
from secureconnect.probe.natbehaviour import NO_NAT, filtering_check, mapping_check, mapping_verdict
from secureconnect.probe.natprobe import run_filtering_tests, run_mapping_tests
from secureconnect.probe.tlsinfo import (
    certificate_facts,
    judge_certificate,
    unverified_context,
    verifying_context,
)
from secureconnect.probe.transport import (
    Channel,
    ChannelError,
    NoAnswer,
    StreamChannel,
    UdpChannel,
    transact,
)
from secureconnect.probe.turnchecks import (
    check_credential,
    check_open_relay,
    check_relay,
    check_relayed_address,
    cleanup,
    code_text,
)
from secureconnect.probe.turnsession import TurnSession
from secureconnect.probe.urls import ProbeUrl
from secureconnect.probe.verdicts import Check, Detail, Status, UrlReport, ms
from secureconnect.probe.wire import (
    Credential,
    binding_request,
    error_of,
    mapped_address,
    plain_address,
    text_attribute,
)
from secureconnect.stun import AttrType

TURN_CHECKS = ("open-relay", "credential", "relayed-address", "relay", "cleanup")
NAT_CHECKS = ("nat-mapping", "nat-filtering")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class ProbeOptions:
    """How to probe: ``timeout`` seconds per step, the credential for TURN (None: the
    credential and relay checks are skipped), ``cafile`` to verify TLS against instead of the
    system store, ``insecure`` to go on past a failed verification (still reported)."""

    timeout: float = 5.0
    credential: Credential | None = None
    cafile: Path | None = None
    insecure: bool = False
    clock: Callable[[], datetime.datetime] = field(default=_utcnow)


def resolve(host: str, port: int, timeout: float) -> list[Address]:
    """``host``'s addresses (an IP literal is its own), bounded by ``timeout``: getaddrinfo has
    no timeout of its own, so it runs in a daemon thread. ChannelError when it fails."""
    try:
        return [(str(ipaddress.ip_address(host)), port)]
    except ValueError:
        pass
    found: list[Address] = []
    failure: list[str] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            failure.append(str(exc))
            return
        for info in infos:
            address: Address = (str(info[4][0]), port)
            if address not in found:
                found.append(address)

    worker = threading.Thread(target=lookup, name="probe-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ChannelError(f"resolving {host} took longer than {timeout:g} s")
    if failure or not found:
        raise ChannelError(f"cannot resolve {host}: {failure[0] if failure else 'no address'}")
    return found


class Connector:
    """Opens channels to the server the way the URL says; the first `open_first` records the
    ``connect`` and ``tls-certificate`` checks and decides how later channels verify TLS."""

    def __init__(self, url: ProbeUrl, server: Address, options: ProbeOptions) -> None:
        self.url = url
        self.server = server
        self.options = options
        self.context: ssl.SSLContext | None = None
        self.unusable = "no connection"  # why `open_first` returned None

    def open_first(self, report: UrlReport) -> Channel | None:
        """The first channel, or None (and a FAIL recorded) when it cannot be used."""
        if not self.url.tls and self.url.transport == "udp":
            try:
                return UdpChannel(self.server)
            except ChannelError as exc:
                report.add(Check("connect", Status.FAIL, str(exc)))
                return None
        try:
            channel, connect_time = StreamChannel.connect(self.server, self.options.timeout)
        except ChannelError as exc:
            report.add(Check("connect", Status.FAIL, str(exc), _FIX_REACH))
            return None
        if self.url.tls:
            return self._handshake(report, channel, connect_time)
        report.add(
            Check(
                "connect",
                Status.OK,
                f"TCP connect {ms(connect_time)} ms",
                details={"connect_ms": ms(connect_time)},
            )
        )
        return channel

    def _handshake(
        self, report: UrlReport, channel: StreamChannel, connect_time: float
    ) -> Channel | None:
        """TLS on the first connection: the ``connect`` and ``tls-certificate`` checks."""
        details: dict[str, Detail] = {"connect_ms": ms(connect_time)}
        verifying = verifying_context(self.options.cafile)
        verify_error: str | None = None
        try:
            handshake = channel.start_tls(verifying, self.url.host, self.options.timeout)
            self.context = verifying
        except ssl.SSLCertVerificationError as exc:
            verify_error = str(exc.verify_message or exc.reason or exc)
            unverified, handshake = self._unverified(report, connect_time)
            if unverified is None:
                return None
            channel = unverified
        except (ssl.SSLError, OSError) as exc:
            report.add(
                Check("connect", Status.FAIL, f"TLS handshake failed: {exc}", _FIX_TLS, details)
            )
            return None
        details.update(
            handshake_ms=ms(handshake), tls_version=channel.tls_version, cipher=channel.cipher
        )
        report.add(
            Check(
                "connect",
                Status.OK,
                f"TCP connect {ms(connect_time)} ms, TLS handshake {ms(handshake)} ms "
                f"({channel.tls_version})",
                details=details,
            )
        )
        der = channel.peer_certificate()
        try:
            facts = certificate_facts(der) if der else None
        except ValueError as exc:
            verify_error, facts = f"unreadable certificate: {exc}", None
        now = self.options.clock()
        check = report.add(
            judge_certificate(
                facts, self.url.host, verify_error, now, handshake=channel.tls_version
            )
        )
        if check.status is Status.FAIL and not self.options.insecure:
            channel.close()
            self.unusable = "the certificate failed (--insecure goes on past it)"
            return None
        if self.context is None:
            self.context = unverified_context()
        return channel

    def _unverified(
        self, report: UrlReport, connect_time: float
    ) -> tuple[StreamChannel | None, float]:
        """A second connection that accepts any certificate, to read the one that failed."""
        try:
            channel, _ = StreamChannel.connect(self.server, self.options.timeout)
            return channel, channel.start_tls(
                unverified_context(), self.url.host, self.options.timeout
            )
        except (ChannelError, ssl.SSLError, OSError) as exc:
            report.add(
                Check(
                    "connect",
                    Status.FAIL,
                    f"TLS handshake failed: {exc}",
                    _FIX_TLS,
                    {"connect_ms": ms(connect_time)},
                )
            )
            return None, 0.0

    def open(self) -> Channel:
        """Another channel like the first (ChannelError when it cannot be opened)."""
        if not self.url.tls and self.url.transport == "udp":
            return UdpChannel(self.server)
        channel, _ = StreamChannel.connect(self.server, self.options.timeout)
        if self.url.tls:
            try:
                channel.start_tls(
                    self.context or unverified_context(), self.url.host, self.options.timeout
                )
            except (ssl.SSLError, OSError) as exc:
                raise ChannelError(f"TLS handshake failed: {exc}") from None
        return channel


_FIX_REACH = (
    "check that the server runs and listens on this address and port (ours `turn.listen`/"
    "`turn.port`, `stun.listen`/`stun.port`; coturn `listening-ip`/`listening-port`) and that "
    "firewalls let the transport through (UDP and TCP 3478, TCP 5349 for TLS by default)"
)
_FIX_TLS = (
    "the TLS port answers but the handshake fails: is TLS on there (ours `turn.tls`/"
    "`turn.tls_port`; coturn `tls-listening-port` with `cert=`/`pkey=`, and no `no-tls`)?"
)


def check_binding(channel: Channel, timeout: float) -> tuple[Check, Address | None]:
    """RFC 8489 §3: a Binding request's answer proves the server reachable; its round trip and
    XOR-MAPPED-ADDRESS are reported. Returns the check and RFC 5780's OTHER-ADDRESS, if any."""
    tid, data = binding_request()
    try:
        exchange = transact(channel, tid, data, timeout)
    except (NoAnswer, ChannelError) as exc:
        return Check("binding", Status.FAIL, f"no Binding answer: {exc}", _FIX_REACH), None
    reply = exchange.reply
    other = plain_address(reply, AttrType.OTHER_ADDRESS)
    mapped = mapped_address(reply)
    details: dict[str, Detail] = {
        "rtt_ms": ms(exchange.rtt),
        "sends": exchange.sends,
        "mapped_address": format_address(*mapped) if mapped else None,
        "other_address": format_address(*other) if other else None,
        "software": text_attribute(reply, AttrType.SOFTWARE),
    }
    error = error_of(reply)
    if error is not None:
        return Check(
            "binding",
            Status.WARN,
            f"Binding answered with error {code_text(*error)}",
            details=details,
        ), None
    if mapped is None:
        return Check(
            "binding",
            Status.FAIL,
            "Binding success without a readable XOR-MAPPED-ADDRESS (RFC 8489 §14.2)",
            details=details,
        ), None
    retried = f" after {exchange.sends} sends" if exchange.sends > 1 else ""
    rfc5780 = f"; RFC 5780 other address {details['other_address']}" if other else ""
    return Check(
        "binding",
        Status.OK,
        f"reachable, RTT {ms(exchange.rtt)} ms{retried}, mapped {details['mapped_address']}"
        f"{rfc5780}",
        details=details,
    ), other


def probe_url(url: ProbeUrl, options: ProbeOptions) -> UrlReport:
    """Every check of one URL (see the module docstring)."""
    report = UrlReport(url.text, url.transport_name)
    nat = not url.is_turn and url.transport == "udp" and not url.tls
    followups = TURN_CHECKS if url.is_turn else NAT_CHECKS if nat else ()
    later = ("binding", *followups)  # what a dead end skips
    try:
        addresses = resolve(url.host, url.port, options.timeout)
    except ChannelError as exc:
        report.add(
            Check("resolve", Status.FAIL, str(exc), "check the host name in the URL and DNS")
        )
        report.skip_rest(later, "the name did not resolve")
        return report
    server = addresses[0]
    report.server = format_address(*server)
    if not url.host_is_ip:
        listed = ", ".join(ip for ip, _ in addresses)
        report.add(
            Check(
                "resolve",
                Status.OK,
                f"{url.host} → {listed}; probing {server[0]}",
                details={"addresses": [ip for ip, _ in addresses]},
            )
        )
    connector = Connector(url, server, options)
    channel = connector.open_first(report)
    if channel is None:
        report.skip_rest(later, connector.unusable)
        return report
    try:
        binding, other = check_binding(channel, options.timeout)
        report.add(binding)
        if binding.status is Status.FAIL:
            report.skip_rest(followups, "the server did not answer")
            return report
        if url.is_turn:
            _turn_checks(report, connector, channel, server, options)
            channel = None  # the TURN checks own and close it
        elif nat:
            _nat_checks(report, server, other, options.timeout)
    finally:
        if channel is not None:
            channel.close()
    return report


def _nat_checks(report: UrlReport, server: Address, other: Address | None, timeout: float) -> None:
    if other is None:
        report.skip_rest(NAT_CHECKS, "the server offers no OTHER-ADDRESS (RFC 5780 off)")
        return
    try:
        mapping = run_mapping_tests(server, other, timeout)
        filtering = run_filtering_tests(server, other, timeout)
    except ChannelError as exc:
        report.add(Check("nat-mapping", Status.WARN, f"discovery failed: {exc}"))
        return
    report.add(mapping_check(mapping))
    report.add(filtering_check(filtering, no_nat=mapping_verdict(mapping) == NO_NAT))


def _turn_checks(
    report: UrlReport,
    connector: Connector,
    channel: Channel,
    server: Address,
    options: ProbeOptions,
) -> None:
    timeout = options.timeout
    first = TurnSession(channel, options.credential, timeout)
    sessions = [first]
    try:
        opened, open_relay = check_open_relay(first)
        report.add(opened)
        if open_relay:
            # That allocation was deleted (or will expire); start the rest on a fresh 5-tuple.
            first.close()
            first = TurnSession(connector.open(), options.credential, timeout)
            sessions.append(first)
        elif opened.status is Status.FAIL:
            report.skip_rest(TURN_CHECKS[1:4], "the unauthenticated Allocate went wrong")
            return
        if options.credential is None:
            report.skip_rest(
                TURN_CHECKS[1:4], "no credential (--secret-file, or --username and --password)"
            )
            return
        credential, allocation = check_credential(first)
        report.add(credential)
        if allocation is None:
            report.skip_rest(TURN_CHECKS[2:4], "no allocation")
            return
        report.add(check_relayed_address(allocation, server[0]))
        report.add(_second_allocation_and_relay(connector, first, sessions, options))
    except ChannelError as exc:
        report.add(Check("relay", Status.FAIL, f"connection failed: {exc}"))
    finally:
        report.add(cleanup(sessions))
        for session in sessions:
            session.close()


def _second_allocation_and_relay(
    connector: Connector, first: TurnSession, sessions: list[TurnSession], options: ProbeOptions
) -> Check:
    """Allocation B on a second 5-tuple, then `check_relay` between ``first`` (A) and B."""
    second = TurnSession(connector.open(), options.credential, options.timeout)
    sessions.append(second)
    try:
        exchange, allocation = second.allocate()
    except (NoAnswer, ChannelError) as exc:
        return Check("relay", Status.FAIL, f"second allocation: {exc}")
    if allocation is None:
        error = error_of(exchange.reply)
        why = code_text(*error) if error else "no XOR-RELAYED-ADDRESS"
        return Check("relay", Status.FAIL, f"second allocation refused: {why}")
    return check_relay(first, second, options.timeout)
