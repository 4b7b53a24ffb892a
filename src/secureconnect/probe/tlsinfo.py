"""Facts about a server's TLS certificate, and the verdict a client would reach on it.

A ``turns:`` URL fails in a browser for reasons the browser hides (an expired certificate, a
name mismatch, a missing intermediate); the probe says which. The handshake itself is done by
the transport with a verifying `ssl.SSLContext` (the system store, or ``--cafile``); when it
fails, the certificate is fetched again without verification so that its facts can still be
reported, and with ``--insecure`` the probe goes on over that unverified connection.

`certificate_facts` reads the DER certificate with ``cryptography``; `host_matches` is RFC 6125
§6.4 matching against the subjectAltName (a wildcard only as the whole left-most label; an IP
host against iPAddress entries; no fallback to the subject CN, which RFC 6125 §6.4.4 only allows
without DNS names and browsers have dropped); `judge_certificate` turns facts and the
verification result into the ``tls-certificate`` check. All pure but the context factories.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from secureconnect.probe.verdicts import Check, Detail, Status

#: Fewer days left than this is a warning: renewal should already have happened (ACME clients
#: renew 30 days ahead; our generated certificate a week ahead, docs/security.md).
WARN_DAYS: Final = 14

FIX_CERT = (
    "install a certificate from a CA the clients trust for this host: ours `tls.cert_file` and "
    "`tls.key_file` (reloaded on SIGHUP; the generated self-signed one is only for tests, trust "
    "it with --cafile STATE_DIR/selfsigned-cert.pem); coturn `cert=` and `pkey=`"
)
FIX_NAME = (
    "use a certificate whose subjectAltName names the host clients use: ours `tls.cert_file` "
    "(or `tls.server_names` for the generated one); coturn `cert=`; or probe the name it has"
)
FIX_EXPIRED = (
    "renew the certificate and reload: ours `tls.cert_file`/`tls.key_file` then SIGHUP "
    "(`systemctl reload secureconnect`); coturn: replace the `cert=`/`pkey=` files and restart"
)


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What a certificate says (the leaf only: that is all a client gets before the chain)."""

    subject: str
    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime

    @property
    def self_signed(self) -> bool:
        return self.subject == self.issuer

    def days_left(self, now: datetime.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400.0


def certificate_facts(der: bytes) -> CertificateFacts:
    """Facts of a DER certificate; ValueError when it cannot be read."""
    # Imported here, not at the top: the command line imports this package to register
    # `probe`, and `secureconnect run turn` without TLS must never map cryptography's native
    # library (tests/test_cli_run.py keeps that so).
    from cryptography import x509  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common = names[0].value if names else None
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    return CertificateFacts(
        subject=cert.subject.rfc4514_string(),
        common_name=common if isinstance(common, str) else None,
        dns_names=dns,
        ip_addresses=ips,
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def host_matches(host: str, facts: CertificateFacts) -> bool:
    """RFC 6125 §6.4: whether ``host`` (a name or an IP literal) is one the certificate names."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:  # RFC 6125 §1.7.2 / RFC 5280 §4.2.1.6: IP hosts match iPAddress entries only
        return any(ipaddress.ip_address(ip) == address for ip in facts.ip_addresses)
    wanted = host.lower().rstrip(".")
    for name in facts.dns_names:
        pattern = name.lower().rstrip(".")
        if pattern == wanted:
            return True
        # RFC 6125 §6.4.3: "*" as the complete left-most label matches exactly one label.
        if pattern.startswith("*.") and "." in wanted:
            head, _, rest = wanted.partition(".")
            if head and rest == pattern[2:]:
                return True
    return False


def judge_certificate(
    facts: CertificateFacts | None,
    host: str,
    verify_error: str | None,
    now: datetime.datetime,
    *,
    handshake: Detail = None,
) -> Check:
    """The ``tls-certificate`` check: ``verify_error`` is the TLS library's verification
    message (None when the handshake verified), ``handshake`` e.g. ``"TLSv1.3"``."""
    if facts is None:
        return Check(
            "tls-certificate",
            Status.FAIL,
            f"could not read the certificate ({verify_error or 'none sent'})",
            FIX_CERT,
        )
    days = facts.days_left(now)
    matches = host_matches(host, facts)
    details: dict[str, Detail] = {
        "subject": facts.subject,
        "common_name": facts.common_name,
        "dns_names": list(facts.dns_names),
        "ip_addresses": list(facts.ip_addresses),
        "issuer": facts.issuer,
        "self_signed": facts.self_signed,
        "not_before": facts.not_before.isoformat(),
        "not_after": facts.not_after.isoformat(),
        "days_left": round(days, 1),
        "matches_host": matches,
        "verified": verify_error is None,
        "verify_error": verify_error,
        "tls_version": handshake,
    }
    status, summary, fix = _verdict(facts, host, verify_error, now, matches=matches)
    return Check("tls-certificate", status, summary, fix, details)


def _verdict(
    facts: CertificateFacts,
    host: str,
    verify_error: str | None,
    now: datetime.datetime,
    *,
    matches: bool,
) -> tuple[Status, str, str | None]:
    """(status, summary, fix) of `judge_certificate`, the most specific problem first: an
    expired certificate says "expired" even though verification failed because of it."""
    days = facts.days_left(now)
    names = ", ".join((*facts.dns_names, *facts.ip_addresses)) or f"CN={facts.common_name}"
    about = f"names {names}; issuer {facts.issuer}; not after {facts.not_after:%Y-%m-%d}"
    if days < 0:
        return (
            Status.FAIL,
            f"certificate EXPIRED on {facts.not_after:%Y-%m-%d %H:%M} UTC "
            f"({-days:.0f} days ago): every client refuses it; {about}",
            FIX_EXPIRED,
        )
    if facts.not_before > now:
        return (
            Status.FAIL,
            f"certificate not valid before {facts.not_before:%Y-%m-%d %H:%M} UTC "
            f"(a clock is wrong, here or on the server); {about}",
            "check both clocks (NTP), or reissue the certificate",
        )
    if not matches:
        return Status.FAIL, f"certificate does not name {host}: {about}", FIX_NAME
    if verify_error is not None:
        return Status.FAIL, f"verification failed: {verify_error}; {about}", FIX_CERT
    if days < WARN_DAYS:
        return Status.WARN, f"verified, but expires in {days:.0f} days: {about}", FIX_EXPIRED
    return Status.OK, f"verified, matches {host}, {days:.0f} days left; {about}", None


def verifying_context(cafile: Path | None) -> ssl.SSLContext:
    """A client context that verifies the chain and the host name: against ``cafile`` only
    when given, else the system store."""
    return ssl.create_default_context(cafile=str(cafile) if cafile is not None else None)


def unverified_context() -> ssl.SSLContext:
    """A client context that accepts any certificate: to read a certificate that failed
    verification, and for ``--insecure``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
