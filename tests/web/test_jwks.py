"""The client's key set on the real HTTPS listener (uvicorn + TLS, a SoftHSM2 client key).

A verifier that registered us by ``jwks_uri`` fetches the set, loads it with jwcrypto and checks
what the broker signed in the HSM (request objects: TEST-CATALOGUE C05; client assertions: C08)
with the key the header ``kid`` names, in each ``[oauth].kid_format`` (I02)."""

from __future__ import annotations

import json
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws

from broker.errors import InvalidArgument
from broker.jose import unverified_parts
from broker.keys.api import KeyInfo, Signer
from broker.keys.kid import KidFormat, kid_for, with_kid_format
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.login import LoginService, LoginSettings
from broker.oauth.client_auth import client_assertion
from broker.web.app import create_app
from broker.web.jwks import JwksEndpoint, StaticKeys, check_jwks_path, etag_matches
from broker.web.server import TlsFiles, WebServer
from devtools.pki import Ca
from tests.clock import FakeClock
from tests.login.fakes import BASE_URL, ISSUER, REDIRECT_URI, FakeClient, FakeSink, client_config

JWKS_PATH = "/.well-known/jwks.json"


@dataclass(frozen=True)
class Listener:
    base_url: str
    ca_file: Path
    service: LoginService
    signer: Signer
    info: KeyInfo

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, verify=ssl.create_default_context(cafile=str(self.ca_file))
        )


@pytest.fixture
def hsm_key(hsm_store: Pkcs11KeyStore) -> Iterator[KeyInfo]:
    label = f"jwks-{secrets.token_hex(4)}"
    info = hsm_store.generate(label, secrets.token_bytes(4))
    try:
        yield info
    finally:
        hsm_store.delete(label)


async def _serve(
    tmp_path: Path,
    store: Pkcs11KeyStore,
    info: KeyInfo,
    kid_format: KidFormat,
    *,
    max_age: int = 300,
) -> AsyncIterator[Listener]:
    ca = Ca("jwks test CA")
    leaf = ca.issue(cn="localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "web.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "web.key").write_bytes(leaf.key_pem)
    signer = with_kid_format(store.signer(info.label), info.public_key, kid_format)
    clock = FakeClock()
    service = LoginService(
        FakeClient(),
        client_config(info.did),
        signer,
        FakeSink(clock=clock),
        clock,
        settings=LoginSettings(BASE_URL),
    )
    app = create_app(
        service,
        redirect_uri=REDIRECT_URI,
        jwks=JwksEndpoint(
            StaticKeys((info.public_key,)), kid_format=kid_format, path=JWKS_PATH, max_age=max_age
        ),
    )
    server = WebServer(
        app,
        host="127.0.0.1",
        port=0,
        tls=TlsFiles(str(tmp_path / "web.pem"), str(tmp_path / "web.key")),
    )
    await server.start()
    try:
        yield Listener(server.base_url, tmp_path / "ca.pem", service, signer, info)
    finally:
        await server.stop()


@pytest.fixture(params=list(KidFormat), ids=lambda f: f.value)
async def listener(
    request: pytest.FixtureRequest, tmp_path: Path, hsm_store: Pkcs11KeyStore, hsm_key: KeyInfo
) -> AsyncIterator[Listener]:
    async for served in _serve(tmp_path, hsm_store, hsm_key, request.param):
        yield served


def _verify_by_kid(key_set: jwk.JWKSet, compact: str) -> dict[str, object]:
    """What a jwks_uri verifier does: pick the key by the header kid, verify ES256."""
    header, _ = unverified_parts(compact)
    key = key_set.get_key(header["kid"])
    assert key is not None, f"no key with kid {header['kid']!r} in the set"
    token = jws.JWS()
    token.deserialize(compact)
    token.verify(key, alg="ES256")
    claims = json.loads(token.payload)
    assert isinstance(claims, dict)
    return claims


async def test_c05_c08_jwks_over_https_verifies_what_the_hsm_signed(listener: Listener) -> None:
    async with listener.client() as http:
        resp = await http.get(JWKS_PATH)
        assert resp.status_code == 200
        key_set = jwk.JWKSet.from_json(resp.content)
        keys = json.loads(resp.content)["keys"]
        assert len(keys) == 1
        published = keys[0]
        assert set(published) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        assert published["kid"] == listener.signer.kid
        assert (published["alg"], published["use"]) == ("ES256", "sig")
        assert not jwk.JWK(**published).has_private

        # A request object, fetched from its request_uri on the same listener.
        view = await listener.service.start(label="ops")
        request_uri = parse_qs(urlsplit(view.authorization_url or "").query)["request_uri"][0]
        got = await http.get(urlsplit(request_uri).path)
        assert got.status_code == 200
    header, _ = unverified_parts(got.text)
    assert header["kid"] == published["kid"]
    claims = _verify_by_kid(key_set, got.text)
    assert claims["client_id"] == claims["iss"] == listener.info.did

    # A client assertion (RFC 7523) through the same HSM signer.
    fake = FakeClient()
    assertion = await client_assertion(
        listener.signer, client_config(listener.info.did), fake.md, now=1_800_000_000.0
    )
    assert unverified_parts(assertion)[0]["kid"] == published["kid"]
    claims = _verify_by_kid(key_set, assertion)
    assert claims["iss"] == claims["sub"] == listener.info.did
    assert claims["aud"] == ISSUER


@pytest.mark.parametrize("kid_format", list(KidFormat), ids=lambda f: f.value)
async def test_i02_served_kid_is_the_one_kid_function(
    tmp_path: Path, hsm_store: Pkcs11KeyStore, hsm_key: KeyInfo, kid_format: KidFormat
) -> None:
    async for served in _serve(tmp_path, hsm_store, hsm_key, kid_format):
        async with served.client() as http:
            keys = (await http.get(JWKS_PATH)).json()["keys"]
        assert keys[0]["kid"] == kid_for(hsm_key.public_key, kid_format) == served.signer.kid
        expected = {
            KidFormat.DID: hsm_key.did,
            KidFormat.DID_URL: f"{hsm_key.did}#{hsm_key.did.removeprefix('did:key:')}",
            KidFormat.JWK_THUMBPRINT: jwk.JWK.from_pyca(hsm_key.public_key).thumbprint(),
        }[kid_format]
        assert keys[0]["kid"] == expected


async def test_jwks_headers_etag_304_head_and_405(
    tmp_path: Path, hsm_store: Pkcs11KeyStore, hsm_key: KeyInfo
) -> None:
    async for served in _serve(tmp_path, hsm_store, hsm_key, KidFormat.DID, max_age=120):
        async with served.client() as http:
            resp = await http.get(JWKS_PATH)
            assert resp.headers["content-type"] == "application/jwk-set+json"
            assert resp.headers["cache-control"] == "public, max-age=120"
            etag = resp.headers["etag"]
            assert etag.startswith('"') and etag.endswith('"')
            again = await http.get(JWKS_PATH)
            assert again.headers["etag"] == etag and again.content == resp.content

            for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
                cached = await http.get(JWKS_PATH, headers={"If-None-Match": tag})
                assert cached.status_code == 304, tag
                assert cached.content == b""
                assert cached.headers["etag"] == etag
                assert cached.headers["cache-control"] == "public, max-age=120"
            stale = await http.get(JWKS_PATH, headers={"If-None-Match": '"stale"'})
            assert stale.status_code == 200 and stale.content == resp.content

            head = await http.head(JWKS_PATH)
            assert head.status_code == 200 and head.content == b""
            assert head.headers["etag"] == etag
            assert head.headers["content-type"] == "application/jwk-set+json"

            for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
                refused = await http.request(method, JWKS_PATH)
                assert refused.status_code == 405, method
                assert refused.headers["allow"] == "GET, HEAD"
            assert (await http.get(JWKS_PATH + "?x=1")).status_code == 200
            assert (await http.get("/.well-known/jwks.json/x")).status_code == 404


async def test_no_jwks_route_when_not_configured(service: LoginService) -> None:
    app = create_app(service, redirect_uri=REDIRECT_URI)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        assert (await http.get(JWKS_PATH)).status_code == 404


async def test_custom_jwks_path(service: LoginService) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    endpoint = JwksEndpoint(StaticKeys((key, key)), path="/keys/client.jwks")
    app = create_app(service, redirect_uri=REDIRECT_URI, jwks=endpoint)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as http:
        assert len((await http.get("/keys/client.jwks")).json()["keys"]) == 1  # deduplicated
        assert (await http.get(JWKS_PATH)).status_code == 404


def test_next_key_from_the_source_is_published_on_the_next_request() -> None:
    """The port for key rotation: whatever the source returns now is what is served."""
    current = ec.generate_private_key(ec.SECP256R1()).public_key()
    upcoming = ec.generate_private_key(ec.SECP256R1()).public_key()
    keys = [current]
    endpoint = JwksEndpoint(lambda: tuple(keys), kid_format=KidFormat.JWK_THUMBPRINT)
    first = endpoint.document()
    keys.append(upcoming)
    second = endpoint.document()
    assert first.etag != second.etag
    kids = [k["kid"] for k in json.loads(second.body)["keys"]]
    assert kids == [
        kid_for(current, KidFormat.JWK_THUMBPRINT),
        kid_for(upcoming, KidFormat.JWK_THUMBPRINT),
    ]


@pytest.mark.parametrize(
    "path",
    [
        "",
        "jwks.json",
        "//evil.example/jwks",
        "/a?b",
        "/a#b",
        "/a/../b",
        "/a//b",
        "/a/",
        "/a b",
        "/%2e%2e",
    ],
)
def test_bad_jwks_paths_are_refused(path: str) -> None:
    with pytest.raises(InvalidArgument):
        check_jwks_path(path)


def test_jwks_path_colliding_with_a_route_is_refused(service: LoginService) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    for path in ("/healthz", "/callback", "/request-objects/x"):
        with pytest.raises(InvalidArgument):
            create_app(
                service, redirect_uri=REDIRECT_URI, jwks=JwksEndpoint(StaticKeys((key,)), path=path)
            )


def test_etag_matching_is_weak_comparison() -> None:
    assert etag_matches('"a"', '"a"')
    assert etag_matches('W/"a"', '"a"')
    assert etag_matches(' "b" , W/"a"', '"a"')
    assert etag_matches("*", '"a"')
    assert not etag_matches('"b"', '"a"')
    assert not etag_matches("a", '"a"')
