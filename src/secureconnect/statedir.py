"""The per-user state directory and the files SecureConnect generates there on first run.

With no config at all, ``secureconnect run`` needs a certificate for TLS/WSS and a TURN shared
secret. Both are created once in the state directory and reused afterwards, so restarting does not
invalidate credentials that clients already hold or certificates they already pinned.

Resource handling: files are written to a temporary name and renamed into place (a crash never
leaves half a key); private keys and secrets are created with mode 0600 in a 0700 directory, and
an existing one found with group or other access is narrowed to its owner when it is reused.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

SELF_SIGNED_CERT = "selfsigned-cert.pem"
SELF_SIGNED_KEY = "selfsigned-key.pem"
SECRET_NAME = "turn-secret"  # noqa: S105 (a file name, not a secret)
CERT_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=7)


def resolve_state_dir(configured: str, env: Mapping[str, str] | None = None) -> Path:
    """The configured dir, else systemd's ``$STATE_DIRECTORY``, else the XDG state home."""
    env = os.environ if env is None else env
    if configured:
        return Path(configured).expanduser()
    if env.get("STATE_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME", "~")).expanduser() / ".local/state"
    )
    return Path(base) / "secureconnect"


def ensure_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if needed and return it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` atomically, readable only by its owner (``mode``)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keep_private(path: Path) -> bool:
    """Take group and other access away from an existing private file we own (a secret or key
    copied in with a loose umask, or left by an older version); True when the mode changed.
    Only the owner can chmod, and only modes wider than 0600 are touched."""
    try:
        st = path.stat()
        if st.st_uid != os.geteuid() or not st.st_mode & 0o077:
            return False
        path.chmod(st.st_mode & 0o700)
    except OSError:
        return False
    return True


def ensure_self_signed(state_dir: Path, names: Sequence[str]) -> tuple[Path, Path]:
    """Return (cert, key) paths of a self-signed certificate for ``names``, creating it if it is
    missing, unreadable, expiring within a week, or made for other names."""
    ensure_dir(state_dir)
    cert_path, key_path = state_dir / SELF_SIGNED_CERT, state_dir / SELF_SIGNED_KEY
    if _usable(cert_path, key_path, names):
        keep_private(key_path)
        return cert_path, key_path
    cert_pem, key_pem = make_self_signed(names)
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem, mode=0o644)
    return cert_path, key_path


def make_self_signed(names: Sequence[str], days: int = CERT_DAYS) -> tuple[bytes, bytes]:
    """A fresh ECDSA P-256 certificate and key (PEM) whose SANs are ``names`` (DNS or IP)."""
    # cryptography is imported only here and in _usable: a process without TLS never loads it
    # (about 9 MiB of an idle TURN server).
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost")]
    )
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def renewal_time(cert_path: Path) -> float | None:
    """Unix time from which :func:`ensure_self_signed` replaces this certificate (a week before
    it expires); None when it cannot be read."""
    from cryptography import x509  # noqa: PLC0415 - see make_self_signed

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return None
    return (cert.not_valid_after_utc - RENEW_BEFORE).timestamp()


def _usable(cert_path: Path, key_path: Path, names: Sequence[str]) -> bool:
    from cryptography import x509  # noqa: PLC0415 - see make_self_signed

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key_path.stat()
    except (OSError, ValueError):
        return False
    if cert.not_valid_after_utc - RENEW_BEFORE < datetime.datetime.now(datetime.UTC):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(v) for v in san.get_values_for_type(x509.IPAddress)}
    have |= set(san.get_values_for_type(x509.DNSName))
    want = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names}
    return have == want


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def ensure_turn_secret(state_dir: Path) -> str:
    """The generated TURN shared secret, created once (256 random bits, URL-safe text)."""
    ensure_dir(state_dir)
    path = state_dir / SECRET_NAME
    try:
        existing = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        existing = ""
    if existing:
        keep_private(path)
        return existing
    secret = secrets.token_urlsafe(32)
    write_private(path, (secret + "\n").encode("ascii"))
    return secret


def resolve_secret_file(
    name: str, config_dir: Path | None, env: Mapping[str, str] | None = None
) -> Path:
    """Find a ``*_file`` value: absolute as is; relative in ``$CREDENTIALS_DIRECTORY`` (systemd
    ``LoadCredential=``) when it exists there, else relative to the config file's folder."""
    env = os.environ if env is None else env
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds and (Path(creds) / path).exists():
        return Path(creds) / path
    return (config_dir or Path.cwd()) / path


def read_secret_lines(path: Path) -> tuple[str, ...]:
    """Secrets from a file, one per line; blank lines and ``#`` comments are skipped."""
    text = path.read_text(encoding="utf-8")
    return tuple(
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
