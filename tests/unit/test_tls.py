"""The fleet CA and certificates (gpufleet.tls): what is written, what a certificate says, who a peer is."""
from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gpufleet import tls
from gpufleet.errors import FailedPrecondition, InvalidArgument


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "ca"
    tls.init_ca(d)
    return d


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def load(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def test_init_ca_writes_a_ca_with_a_private_key(tmp_path: Path) -> None:
    crt, key = tls.init_ca(tmp_path / "ca", common_name="test CA", days=30)
    assert (crt.name, key.name) == ("ca.crt", "ca.key")
    assert mode(key) == 0o600
    assert mode(crt) == 0o644
    cert = load(crt)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test CA"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert dt.timedelta(days=29) < cert.not_valid_after_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    assert b"PRIVATE KEY" in key.read_bytes() and b"PRIVATE KEY" not in crt.read_bytes()


def test_init_ca_refuses_to_replace_a_ca_unless_forced(ca: Path) -> None:
    before = (ca / "ca.crt").read_bytes()
    with pytest.raises(FailedPrecondition, match="already holds a CA"):
        tls.init_ca(ca)
    assert (ca / "ca.crt").read_bytes() == before
    tls.init_ca(ca, force=True)
    assert (ca / "ca.crt").read_bytes() != before


def test_issue_encodes_name_role_sans_and_usages(ca: Path, tmp_path: Path) -> None:
    crt, key = tls.issue(ca, tmp_path / "node", "gpu01", "agent", ["10.0.0.5", "gpu01.example.com", "::1"])
    assert (crt.name, key.name) == ("gpu01.crt", "gpu01.key")
    assert mode(key) == 0o600
    # A self-contained folder: certificate, key and the CA to trust.
    assert (tmp_path / "node" / "ca.crt").read_bytes() == (ca / "ca.crt").read_bytes()
    cert = load(crt)
    cert.verify_directly_issued_by(load(ca / "ca.crt"))
    subject = cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gpu01"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "agent"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False

    info = tls.describe(crt)
    assert (info.name, info.role) == ("gpu01", "agent")
    assert info.dns == ["gpu01", "gpu01.example.com"]
    assert info.ips == ["10.0.0.5", "::1"]
    assert dt.timedelta(days=364) < info.not_after - dt.datetime.now(dt.UTC) <= dt.timedelta(days=365)
    assert info.not_before < dt.datetime.now(dt.UTC)
    assert "gpufleet CA" in info.issuer


@pytest.mark.parametrize("role", tls.ROLES)
def test_every_role_round_trips_through_pem(ca: Path, tmp_path: Path, role: str) -> None:
    crt, _ = tls.issue(ca, tmp_path, f"n-{role}", role)
    assert tls.identity_from_pem(crt.read_bytes()) == tls.Identity(f"n-{role}", role)
    assert tls.identity_from_pem(crt.read_text()) == (f"n-{role}", role)


def test_expired_and_not_yet_valid_certificates(ca: Path, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    old = tls.describe(tls.issue(ca, tmp_path, "old", "agent", days=-1)[0])
    assert old.not_after < now and old.not_before < old.not_after
    future = tls.describe(tls.issue(ca, tmp_path, "future", "agent", days=30,
                                    valid_from=now + dt.timedelta(days=2))[0])
    assert future.not_before > now


def test_a_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    tls.init_ca(tmp_path / "ca", days=10)
    info = tls.describe(tls.issue(tmp_path / "ca", tmp_path, "n", "client", days=365)[0])
    assert info.not_after <= load(tmp_path / "ca" / "ca.crt").not_valid_after_utc


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"role": "admin"}, "role"),
    ({"name": "bad name"}, "name"),
    ({"name": ""}, "name"),
    ({"name": "../etc"}, "name"),
    ({"hosts": ["not a host!"]}, "hosts"),
])
def test_issue_refuses_bad_input(ca: Path, tmp_path: Path, kwargs: dict, field: str) -> None:
    args = {"name": "n1", "role": "agent", "hosts": []} | kwargs
    with pytest.raises(InvalidArgument) as exc:
        tls.issue(ca, tmp_path / "out", **args)
    assert exc.value.field == field
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.key"))


def test_issue_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="certs init"):
        tls.issue(tmp_path / "nothing", tmp_path / "out", "n1", "agent")


class FakeContext:
    def __init__(self, auth: dict | None) -> None:
        self._auth = auth

    def auth_context(self) -> dict:
        if self._auth is None:
            raise RuntimeError("no auth context")
        return self._auth


def test_peer_identity_reads_the_verified_certificate(ca: Path, tmp_path: Path) -> None:
    crt, _ = tls.issue(ca, tmp_path, "coord", "coordinator", ["127.0.0.1"])
    pem = crt.read_bytes()
    assert tls.peer_identity(FakeContext({"x509_pem_cert": [pem], "x509_common_name": [b"coord"]})) == (
        "coord", "coordinator")
    no_cert = FakeContext({"transport_security_type": [b"ssl"]})  # TLS, but no client certificate
    assert tls.peer_identity(no_cert) is None
    assert tls.peer_identity(FakeContext({})) is None  # plaintext
    assert tls.peer_identity(FakeContext(None)) is None
    assert tls.peer_identity(FakeContext({"x509_pem_cert": [b"garbage"]})) is None


def test_a_certificate_without_a_gpufleet_role_has_no_identity(ca: Path, tmp_path: Path) -> None:
    # The CA's own certificate has a CN but no OU role: it is nobody in the fleet.
    assert tls.identity_from_pem((ca / "ca.crt").read_bytes()) is None


def test_credentials_are_built_from_files_and_missing_files_are_named(ca: Path, tmp_path: Path) -> None:
    crt, key = tls.issue(ca, tmp_path, "c1", "coordinator", ["127.0.0.1"])
    assert tls.server_credentials(crt, key, ca / "ca.crt") is not None
    assert tls.channel_credentials(ca / "ca.crt", crt, key) is not None
    assert tls.channel_credentials(ca / "ca.crt") is not None
    with pytest.raises(InvalidArgument, match="--tls-key.*missing.key"):
        tls.server_credentials(crt, tmp_path / "missing.key", ca / "ca.crt")
    with pytest.raises(InvalidArgument, match="--tls-ca"):
        tls.channel_credentials(tmp_path / "nope.crt")


def test_describe_names_the_flag_of_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="--tls-cert.*cannot read"):
        tls.describe(tmp_path / "missing.crt")
    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(InvalidArgument, match="--tls-cert.*not a PEM certificate"):
        tls.describe(tmp_path / "junk.crt")
