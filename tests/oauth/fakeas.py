"""A hostile, per-test configurable authorization server behind httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from broker.jose import b64url
from broker.keys.didkey import did_from_public_key, public_jwk
from broker.keys.soft import es256_raw_signature

ISSUER = "https://verifier.example.org"
REDIRECT_URI = "https://broker.example.org/callback"

Responder = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def metadata_doc(issuer: str = ISSUER, base: str | None = None) -> dict[str, Any]:
    base = base or issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{base}/oidc/authorize",
        "token_endpoint": f"{base}/oidc/token",
        "jwks_uri": f"{base}/oidc/jwks",
        "pushed_authorization_request_endpoint": f"{base}/oidc/par",
        "id_token_signing_alg_values_supported": ["RS256"],  # DOME advertises RS256 (wrongly)
    }


@dataclass
class AsKey:
    """An AS signing key (P-256), with kid = its did:key like the DOME Verifier."""

    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    kid: str | None = None

    def __post_init__(self) -> None:
        if self.kid is None:
            self.kid = did_from_public_key(self.private.public_key())

    def jwk(self) -> dict[str, str]:
        return public_jwk(self.private.public_key(), kid=self.kid)

    def sign(
        self,
        claims: dict[str, Any],
        *,
        header: dict[str, Any] | None = None,
        mangle: Callable[[bytes], bytes] | None = None,
    ) -> str:
        hdr = header if header is not None else {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = b64url(json.dumps(hdr).encode()) + "." + b64url(json.dumps(claims).encode())
        sig = es256_raw_signature(
            self.private.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        )
        if mangle is not None:
            sig = mangle(sig)
        return f"{signing_input}.{b64url(sig)}"


def form_of(request: httpx.Request) -> dict[str, str]:
    parsed = parse_qs(request.content.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in parsed.values()), "duplicated form field"
    return {k: v[0] for k, v in parsed.items()}


@dataclass
class FakeAS:
    """Routes discovery, JWKS, token and PAR; each route can be overridden per test."""

    key: AsKey = field(default_factory=AsKey)
    issuer: str = ISSUER
    metadata: dict[str, Any] = field(default_factory=metadata_doc)
    jwks_keys: list[dict[str, Any]] | None = None
    token: Responder | None = None
    par: Responder | None = None
    discovery: Responder | None = None
    jwks: Responder | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    def count(self, path: str) -> int:
        return sum(1 for r in self.requests if r.url.path == path)

    def token_forms(self) -> list[dict[str, str]]:
        return [form_of(r) for r in self.requests if r.url.path == "/oidc/token"]

    def id_token(self, client_id: str, *, now: float, **overrides: Any) -> str:
        now = int(now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client_id,
            "sub": "did:key:zDnaeUser",
            "iat": now,
            "exp": now + 60,
        }
        for name, value in overrides.items():
            if value is _DROP:
                claims.pop(name, None)
            else:
                claims[name] = value
        return self.key.sign(claims)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path.removeprefix(httpx.URL(self.issuer).path.rstrip("/"))
        responder: Responder | None = None
        if path == "/.well-known/openid-configuration":
            responder = self.discovery or (lambda _r: httpx.Response(200, json=self.metadata))
        elif path == "/oidc/jwks":
            keys = self.jwks_keys if self.jwks_keys is not None else [self.key.jwk()]
            responder = self.jwks or (lambda _r: httpx.Response(200, json={"keys": keys}))
        elif path == "/oidc/token":
            responder = self.token
        elif path == "/oidc/par":
            responder = self.par
        if responder is None:
            return httpx.Response(404)
        result = responder(request)
        if isinstance(result, httpx.Response):
            return result
        return await result

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


class _Drop:
    pass


_DROP = _Drop()
DROP: Any = _DROP
