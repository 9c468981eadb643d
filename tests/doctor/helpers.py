"""A complete broker deployment on disk for the doctor: config, PIN, policy, PKI, store path;
and a fake DOME Verifier behind httpx.MockTransport (fault injection at unit level)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.clock import Clock
from broker.keys.didkey import jwk_from_did, public_jwk

ISSUER = "https://verifier.example.org"
BASE_URL = "https://broker.example.org"
DAY = dt.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class CertAuthority:
    now: dt.datetime
    not_after: dt.datetime | None = None
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def __post_init__(self) -> None:
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("doctor test CA"))
            .issuer_name(_name("doctor test CA"))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - 10 * DAY)
            .not_valid_after(self.not_after or self.now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        cn: str = "broker.example.org",
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or self.now - DAY)
            .not_valid_after(not_after or self.now + 90 * DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        return cert_path, key_path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string for these plain values


def write_toml(path: Path, doc: dict[str, dict[str, object]]) -> Path:
    lines: list[str] = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class Deployment:
    """Files of one broker deployment under ``root``; ``sections`` is the TOML to write."""

    root: Path
    sections: dict[str, dict[str, object]]

    def write(self, name: str = "broker.toml") -> Path:
        return write_toml(self.root / name, self.sections)


def make_deployment(
    root: Path,
    *,
    now: float,
    token_label: str,
    key_label: str,
    sealing_label: str,
    pin_file: Path,
    issuer: str = ISSUER,
    allow_insecure_http: bool = False,
) -> Deployment:
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    ca = CertAuthority(when)
    web_cert, web_key = ca.issue(root / "web.pem", root / "web.key")
    grpc_cert, grpc_key = ca.issue(root / "grpc.pem", root / "grpc.key")
    client_ca = ca.write_ca(root / "client-ca.pem")
    policy = root / "policy.toml"
    policy.write_text(
        '[identities."spiffe://corp/billing"]\nmethods = ["GetAccessToken"]\ngrants = ["*"]\n',
        encoding="utf-8",
    )
    uri = f"pkcs11:token={token_label};object={key_label}?pin-source=file:{pin_file}"
    return Deployment(
        root,
        {
            "key": {"uri": uri, "sealing_key_label": sealing_label},
            "oauth": {
                "issuer": issuer,
                "redirect_uri": BASE_URL + "/callback",
                "allow_insecure_http": allow_insecure_http,
            },
            "web": {
                "public_base_url": BASE_URL,
                "tls_cert": str(web_cert),
                "tls_key": str(web_key),
            },
            "grpc": {
                "server_cert": str(grpc_cert),
                "server_key": str(grpc_key),
                "client_ca": str(client_ca),
                "policy_file": str(policy),
                "bind": "127.0.0.1:0",
            },
            "store": {"kind": "sqlite", "path": str(root / "grants.db")},
        },
    )


@dataclass
class FakeVerifier:
    """Discovery, JWKS and ``/oidc/did/{did}`` like the DOME Verifier, per-test faults.

    ``did_key``: "derive" (the JWKS of the did in the path), "other" (another key), or an
    HTTP status to answer instead. ``date_offset``: seconds the AS's ``Date`` is ahead of
    ``clock`` (None: no Date header).
    """

    clock: Clock
    issuer: str = ISSUER
    advertised_issuer: str | None = None
    jwks_keys: list[dict[str, Any]] | None = None
    did_key: str | int = "derive"
    date_offset: float | None = 0.0
    down: bool = False
    extra_metadata: dict[str, Any] = field(default_factory=dict)  # overrides in discovery
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.jwks_keys is None:
            key = ec.generate_private_key(ec.SECP256R1()).public_key()
            self.jwks_keys = [public_jwk(key, kid="did:key:verifier")]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        headers = {}
        if self.date_offset is not None:
            headers["Date"] = formatdate(self.clock.now() + self.date_offset, usegmt=True)
        path = request.url.path
        if path == "/.well-known/openid-configuration":
            doc = {
                "issuer": self.advertised_issuer or self.issuer,
                "authorization_endpoint": f"{self.issuer}/oidc/authorize",
                "token_endpoint": f"{self.issuer}/oidc/token",
                "jwks_uri": f"{self.issuer}/oidc/jwks",
                **self.extra_metadata,
            }
            return httpx.Response(200, json=doc, headers=headers)
        if path == "/oidc/jwks":
            return httpx.Response(200, json={"keys": self.jwks_keys}, headers=headers)
        if path.startswith("/oidc/did/"):
            if isinstance(self.did_key, int):
                return httpx.Response(self.did_key, headers=headers)
            did = path.removeprefix("/oidc/did/")
            if self.did_key == "other":
                key = ec.generate_private_key(ec.SECP256R1()).public_key()
                jwk = public_jwk(key, kid=did)
            else:
                jwk = jwk_from_did(did)
            return httpx.Response(200, json={"keys": [jwk]}, headers=headers)
        return httpx.Response(404, headers=headers)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
