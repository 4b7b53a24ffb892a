"""A server TLS context that can be swapped at run time (SIGHUP) without touching live sessions.

Listeners ask :attr:`CertificateStore.context` for every new connection, so after :meth:`reload`
new connections present the new certificate while established ones keep the old context.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class CertificateStore:
    """Holds the current server ``ssl.SSLContext`` built from a certificate and key file.

    Error handling: a reload that fails (missing file, key that does not match) raises and keeps
    the previous context, so a typo during a certificate rotation never takes TLS down.
    """

    def __init__(self, cert_file: Path, key_file: Path, alpn: tuple[str, ...] = ()) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._alpn = alpn
        self._context = self._build()
        self.generation = 1

    @property
    def context(self) -> ssl.SSLContext:
        """The context new connections should use."""
        return self._context

    def reload(self) -> None:
        """Re-read the files; on failure the old context stays in force and the error propagates."""
        self._context = self._build()
        self.generation += 1

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        if self._alpn:
            context.set_alpn_protocols(list(self._alpn))
        return context
