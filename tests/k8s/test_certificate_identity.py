"""Reading a client certificate as the API server's x509 authenticator does (no cluster).

CN is the user, each O a group, in order; ``system:authenticated`` is added, as the
server adds it. The real control plane's agreement is tested in test_identity.py.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from aicontract.backends.kubernetes.core import certificate_identity


def pem(*attributes: tuple[x509.ObjectIdentifier, str]) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_cn_is_the_user_and_each_o_a_group_in_order() -> None:
    who = certificate_identity(
        pem(
            (NameOID.ORGANIZATION_NAME, "ml"),
            (NameOID.COMMON_NAME, "alice"),
            (NameOID.ORGANIZATION_NAME, "research"),
        ),
        "test",
    )
    assert who is not None
    assert str(who) == "user:alice"
    assert who.groups == ("ml", "research", "system:authenticated")
    assert "group:research" in who.principals()


def test_a_chain_is_read_by_its_first_certificate() -> None:
    chain = pem((NameOID.COMMON_NAME, "bob")) + pem((NameOID.COMMON_NAME, "intermediate-ca"))
    who = certificate_identity(chain, "test")
    assert who is not None
    assert who.name == "bob"


def test_a_service_account_cn_is_a_service_account() -> None:
    who = certificate_identity(pem((NameOID.COMMON_NAME, "system:serviceaccount:ml:x")), "t")
    assert who is not None
    assert str(who) == "serviceaccount:ml/x"


def test_no_certificate_or_no_cn_names_nobody() -> None:
    assert certificate_identity(b"not a certificate", "test") is None
    assert certificate_identity(pem((NameOID.ORGANIZATION_NAME, "ml")), "test") is None
