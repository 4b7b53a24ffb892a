"""The server certificate kept current while the process runs: the operator's files re-read on
SIGHUP, the generated self-signed one renewed before it expires.

Components ask :meth:`ServerCertificate.context` at every TLS handshake, so whatever changed
applies to the next connection and never to an established one. An operator's certificate is
theirs to renew: SIGHUP re-reads it. The self-signed certificate generated in the state directory
(:func:`~secureconnect.statedir.ensure_self_signed`) is valid for a year; a server that runs
that long must not start presenting an expired one, so from a week before expiry
(:func:`~secureconnect.statedir.renewal_time`) the next handshake or SIGHUP replaces and reloads
it. Checking is one float comparison per handshake; the files are touched only when due.

Error handling: a renewal that fails (a full disk, say) logs, keeps the old certificate and tries
again an hour later, never on every handshake. A failing reload of the operator's files raises to
the supervisor's reload hook, which logs it and keeps the old context
(:class:`~secureconnect.tlscontext.CertificateStore`).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from secureconnect.logs import fields
from secureconnect.statedir import SELF_SIGNED_CERT, ensure_self_signed, renewal_time
from secureconnect.tlscontext import CertificateStore

# The logger name the renewal events had when they lived in runtime (log filters keep working).
log = logging.getLogger("secureconnect.runtime")

RETRY_AFTER = 3600.0  # seconds until a failed renewal is tried again


@dataclass
class ServerCertificate:
    """The process's :class:`CertificateStore` and, for a generated certificate, when to renew it.

    ``renew_at`` is the Unix time at which the generated certificate is replaced; None for the
    operator's certificate, which they renew and reload themselves.
    """

    store: CertificateStore
    state_dir: Path
    server_names: Sequence[str]
    renew_at: float | None = None

    @classmethod
    def watch(
        cls,
        store: CertificateStore,
        state_dir: Path,
        server_names: Sequence[str],
        *,
        generated: bool,
    ) -> ServerCertificate:
        """Keep ``store`` current; ``generated``: it holds the state directory's self-signed
        certificate for ``server_names`` (so it is renewed), else the operator's files."""
        renew_at = renewal_time(state_dir / SELF_SIGNED_CERT) if generated else None
        return cls(store, state_dir, server_names, renew_at)

    def context(self) -> ssl.SSLContext:
        """The TLS context for a new connection, after renewing a generated certificate that is
        due."""
        if self.renew_at is not None and time.time() >= self.renew_at:
            self.renew_self_signed()
        return self.store.context

    def reload(self) -> None:
        """SIGHUP: re-read the operator's files, or renew a generated certificate that is due."""
        if self.renew_at is not None:
            self.renew_self_signed()
        else:
            self.store.reload()

    def renew_self_signed(self) -> None:
        """Make sure the generated certificate is current (replacing it when it is within a week
        of expiry or made for other names), then load it."""
        try:
            cert, _ = ensure_self_signed(self.state_dir, self.server_names)
            self.store.reload()
        except (OSError, ValueError) as exc:
            log.warning("self-signed-renewal-failed", extra=fields(error=str(exc)))
            self.renew_at = time.time() + RETRY_AFTER
            return
        self.renew_at = renewal_time(cert)
        log.info("self-signed-certificate", extra=fields(path=str(cert)))
