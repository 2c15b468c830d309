"""The fleet's certificate authority and mTLS credentials (the `cryptography` package).

`gpufleet certs init` makes a CA (ca.crt, ca.key); `gpufleet certs issue` signs a certificate for
one party of the fleet. The party's *role* is part of the signed subject, so a peer can prove it:

    subject  CN=<name>, OU=<role>, O=gpufleet      role: agent | coordinator | client
    SANs     DNS:<name>, then every --host (IP addresses as IP SANs, the rest as DNS names)
    EKU      serverAuth + clientAuth (agents and the coordinator both serve and dial)

The TLS handshake itself refuses a certificate that is expired, not yet valid, or not signed by
the fleet CA (gRPC verifies the chain against `--tls-ca`); `peer_identity` then reads the verified
certificate from a call's auth context so that gpufleet.auth can check the role and the name.

Keys are ECDSA P-256 (small, fast, supported by every gRPC build) and are written 0600.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gpufleet.errors import FailedPrecondition, InvalidArgument

ROLES = ("agent", "coordinator", "client")
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
ORGANIZATION = "gpufleet"
CLOCK_SKEW = dt.timedelta(minutes=5)  # not_before is back-dated this much
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,126}[A-Za-z0-9])?$")


class Identity(NamedTuple):
    """Who is on the other end of a verified mTLS connection."""

    name: str  # the certificate's CN (for an agent: its node name)
    role: str  # the certificate's OU: agent | coordinator | client


class CertInfo(NamedTuple):
    name: str
    role: str
    dns: list[str]
    ips: list[str]
    not_before: dt.datetime
    not_after: dt.datetime
    issuer: str
    serial: int
    fingerprint_sha256: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret: created 0600 (never readable by others, not even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _check_name(name: str, field: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise InvalidArgument(field, f"must be 1-128 characters of letters, digits, '.', '_', '-' "
                                     f"(a host or node name), got {name!r}")


def _validity(days: int, valid_from: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    """[not_before, not_after]; a negative `days` makes an already expired certificate (for tests)."""
    start = (valid_from or _now()) - (dt.timedelta(0) if valid_from else CLOCK_SKEW)
    end = (valid_from or _now()) + dt.timedelta(days=days)
    if end <= start:
        start = end - dt.timedelta(days=1)
    return start, end


def init_ca(directory: str | os.PathLike[str], common_name: str = "gpufleet CA", days: int = 3650,
            force: bool = False) -> tuple[Path, Path]:
    """Make the fleet CA in `directory`: (ca.crt, ca.key). Refuses to replace an existing CA
    unless `force` (every certificate it signed would stop working)."""
    d = Path(directory).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    crt_path, key_path = d / CA_CERT, d / CA_KEY
    if not force and (crt_path.exists() or key_path.exists()):
        raise FailedPrecondition(f"{d} already holds a CA ({CA_CERT}/{CA_KEY}); replacing it would "
                                 "invalidate every certificate it signed (use --force to do it anyway)")
    if days <= 0:
        raise InvalidArgument("days", f"must be > 0, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
    ])
    start, end = _validity(days, None)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path


def load_ca(ca_dir: str | os.PathLike[str]) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = Path(ca_dir).expanduser()
    try:
        cert = x509.load_pem_x509_certificate((d / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((d / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise FailedPrecondition(f"no CA in {d}: {Path(exc.filename).name} is missing "
                                 f"(run `gpufleet certs init {d}` first)") from None
    except ValueError as exc:
        raise FailedPrecondition(f"the CA in {d} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FailedPrecondition(f"{d / CA_KEY}: expected an EC private key")
    return cert, key


def _sans(name: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in [name, *hosts]:
        h = h.strip().strip("[]")
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            if not re.match(r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$", h):
                raise InvalidArgument("hosts", f"{h!r} is neither an IP address nor a DNS name") from None
            out.append(x509.DNSName(h))
    return out


def issue(ca_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], name: str, role: str,
          hosts: Iterable[str] = (), days: int = 365,
          valid_from: dt.datetime | None = None, stem: str = "", force: bool = False) -> tuple[Path, Path]:
    """Sign a certificate for `name` with `role`; writes <out_dir>/<stem>.crt, <stem>.key (0600; stem:
    `name` unless given, e.g. the role, to match the deploy paths /etc/gpufleet/tls/agent.crt) and a
    copy of the CA certificate (<out_dir>/ca.crt) so the folder is all a host needs. Refuses to
    replace an existing certificate or key unless `force`.

    `hosts` are the addresses peers dial this party by (IPs and DNS names; `name` is always
    included). `days` < 0 or a `valid_from` in the future make unusable certificates (for tests).
    """
    if role not in ROLES:
        raise InvalidArgument("role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    _check_name(name, "name")
    out = Path(out_dir).expanduser()
    crt_path, key_path = out / f"{stem or name}.crt", out / f"{stem or name}.key"
    if not force and (crt_path.exists() or key_path.exists()):
        raise FailedPrecondition(f"{crt_path} or {key_path} already exists; a running daemon may be using it "
                                 "(use --force to replace it)")
    ca_cert, ca_key = load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(days, valid_from)
    if end > ca_cert.not_valid_after_utc:
        end = ca_cert.not_valid_after_utc  # a certificate cannot outlive its CA
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, name),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_sans(name, hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, _key_pem(key))
    _write_public(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    ca_copy = out / CA_CERT
    if ca_copy.resolve() != (Path(ca_dir).expanduser() / CA_CERT).resolve():
        _write_public(ca_copy, ca_cert.public_bytes(serialization.Encoding.PEM))
    return crt_path, key_path


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def identity_from_pem(pem: bytes | str) -> Identity | None:
    """(CN, OU) of a PEM certificate, or None when it carries no gpufleet role."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        return None
    name = _attr(cert.subject, NameOID.COMMON_NAME)
    role = _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if not name or role not in ROLES:
        return None
    return Identity(name, role)


def describe(cert_path: str | os.PathLike[str], field: str = "--tls-cert") -> CertInfo:
    """What a certificate file says (for `gpufleet certs issue`, the agent's node name, tests)."""
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path, field))
    except ValueError as exc:
        raise InvalidArgument(field, f"{cert_path} is not a PEM certificate: {exc}") from None
    return _cert_info(cert)


def _cert_info(cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        dns, ips = [], []
    return CertInfo(
        name=_attr(cert.subject, NameOID.COMMON_NAME),
        role=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        dns=dns, ips=ips, not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        issuer=cert.issuer.rfc4514_string(), serial=cert.serial_number,
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def names_address(info: CertInfo, host: str) -> bool:
    """Whether a certificate's subject alternative names cover `host` (an IP or a DNS name)."""
    try:
        return str(ipaddress.ip_address(host.strip("[]"))) in info.ips
    except ValueError:
        return host.lower().rstrip(".") in (d.lower() for d in info.dns)


def check_names_address(cert_path: str | os.PathLike[str], address: str, field: str = "--advertise") -> None:
    """Refuse a certificate that does not name the address peers dial (HOST:PORT): the peer's hostname
    verification would fail on every call, and jobs would hang without a word on this side."""
    host = address.rpartition(":")[0].strip("[]") or address
    info = describe(cert_path)
    if not names_address(info, host):
        names = ", ".join(info.dns + info.ips) or "none"
        raise InvalidArgument(field, f"{address!r}: the certificate {cert_path} does not name {host!r} "
                                     f"(it names {names}), so the coordinator would refuse every call to it; "
                                     f"issue it with `gpufleet certs issue {info.name} --role {info.role} "
                                     f"--host {host}`, or advertise an address it names")


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidArgument(what, f"cannot read {path}: {exc.strerror}") from None


def server_credentials(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                       ca: str | os.PathLike[str]) -> grpc.ServerCredentials:
    """mTLS server side: every client must present a certificate signed by `ca`."""
    return grpc.ssl_server_credentials(
        [(_read(key, "--tls-key"), _read(cert, "--tls-cert"))],
        root_certificates=_read(ca, "--tls-ca"),
        require_client_auth=True,
    )


def channel_credentials(ca: str | os.PathLike[str], cert: str | os.PathLike[str] | None = None,
                        key: str | os.PathLike[str] | None = None) -> grpc.ChannelCredentials:
    """mTLS client side: trust only the fleet CA, present our own certificate (when given)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "--tls-ca"),
        private_key=_read(key, "--tls-key") if key else None,
        certificate_chain=_read(cert, "--tls-cert") if cert else None,
    )


def peer_identity(context: Any) -> Identity | None:
    """The verified peer certificate's (name, role), or None (plaintext, no certificate, no role).

    gRPC only fills the auth context with a certificate it verified against the server's CA.
    """
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - a context without TLS
        return None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    return identity_from_pem(pems[0])


def peer_names(context: Any) -> CertInfo | None:
    """The verified peer certificate in full (its subject alternative names included), or None."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # noqa: BLE001 - a context without TLS
        return None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        data = pems[0] if isinstance(pems[0], bytes) else str(pems[0]).encode()
        return _cert_info(x509.load_pem_x509_certificate(data))
    except ValueError:
        return None


def dial(address: str, ca: str = "", cert: str = "", key: str = "",
         options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel to `address`: mTLS when a CA is given (with our certificate when cert/key are),
    plaintext otherwise."""
    if ca:
        return grpc.secure_channel(address, channel_credentials(ca, cert or None, key or None), options)
    return grpc.insecure_channel(address, options)
