# ruff: noqa: PLR0917  (pytest injects fixtures as positional parameters)
"""Discovery (RFC 8414 / OIDC Discovery) and the JWKS cache: catalogue A01, A09, A11."""

from __future__ import annotations

import httpx
import pytest

from broker.errors import (
    AuthServerUnavailable,
    ConfigError,
    DiscoveryError,
    EndpointOriginRefused,
    TokenValidationError,
    UnexpectedResponse,
)
from broker.keys.soft import SoftSigner
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import JwksCache, MetadataCache, discovery_url
from tests.clock import FakeClock
from tests.oauth.fakeas import ISSUER, REDIRECT_URI, AsKey, FakeAS, metadata_doc


@pytest.mark.parametrize(
    "advertised",
    [
        "https://evil.example.org",  # other host
        "https://verifier.example.org/other",  # same host, other path
        "https://verifier.example.org/",  # trailing slash only
        "https://Verifier.example.org",  # letter case only
        None,  # missing
    ],
)
async def test_a01_issuer_mismatch_rejects_metadata(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    config: ClientConfig,
    clock: FakeClock,
    advertised: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc = metadata_doc()
    if advertised is None:
        del doc["issuer"]
    else:
        doc["issuer"] = advertised
    fake_as.metadata = doc
    cache = MetadataCache(http, config, clock)
    with pytest.raises(DiscoveryError) as info:
        await cache.get()
    assert info.value.reason == "issuer_mismatch"
    assert [r.levelname for r in caplog.records if "issuer_mismatch" in r.getMessage()] == ["ERROR"]
    # nothing cached: the next call asks again (and fails again)
    with pytest.raises(DiscoveryError):
        await cache.get()
    assert fake_as.count("/.well-known/openid-configuration") == 2
    assert fake_as.count("/oidc/token") == 0


@pytest.mark.parametrize(
    "field",
    [
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "pushed_authorization_request_endpoint",
    ],
)
async def test_a11_http_endpoint_in_metadata_is_rejected(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock, field: str
) -> None:
    fake_as.metadata[field] = fake_as.metadata[field].replace("https://", "http://")
    with pytest.raises(DiscoveryError) as info:
        await MetadataCache(http, config, clock).get()
    assert info.value.reason == "insecure_endpoint"


def test_a11_http_issuer_is_a_config_error_unless_allowed_for_tests() -> None:
    with pytest.raises(ConfigError):
        ClientConfig(issuer="http://verifier.example.org", client_id="x", redirect_uri="y")
    cfg = ClientConfig(
        issuer="http://127.0.0.1:3000", client_id="x", redirect_uri="y", allow_http_issuer=True
    )
    assert cfg.allow_http_issuer


async def test_metadata_missing_endpoint_is_rejected(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    del fake_as.metadata["token_endpoint"]
    with pytest.raises(DiscoveryError) as info:
        await MetadataCache(http, config, clock).get()
    assert info.value.reason == "missing_field"


async def test_metadata_non_200_and_html_are_typed_errors(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.discovery = lambda _r: httpx.Response(503)
    with pytest.raises(DiscoveryError) as info:
        await MetadataCache(http, config, clock).get()
    assert info.value.reason == "http_status"
    fake_as.discovery = lambda _r: httpx.Response(
        200, content=b"<html>portal</html>", headers={"content-type": "text/html"}
    )
    with pytest.raises(UnexpectedResponse):
        await MetadataCache(http, config, clock).get()


async def test_metadata_is_cached_for_its_ttl(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    cache = MetadataCache(http, config, clock, ttl=100)
    first = await cache.get()
    assert first.token_endpoint == f"{ISSUER}/oidc/token"
    assert first.pushed_authorization_request_endpoint == f"{ISSUER}/oidc/par"
    await cache.get()
    assert fake_as.count("/.well-known/openid-configuration") == 1
    clock.advance(101)
    await cache.get()
    assert fake_as.count("/.well-known/openid-configuration") == 2


async def test_endpoints_under_a_path_prefix_come_from_discovery(signer_kid: str) -> None:
    issuer = "https://dome.example.org/verifier"
    fake = FakeAS(issuer=issuer, metadata=metadata_doc(issuer))
    cfg = ClientConfig(issuer=issuer, client_id=signer_kid, redirect_uri=REDIRECT_URI)
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake.handle)) as http:
        md = await MetadataCache(http, cfg, FakeClock()).get()
    assert str(fake.requests[0].url) == discovery_url(issuer)
    assert (
        str(fake.requests[0].url)
        == "https://dome.example.org/verifier/.well-known/openid-configuration"
    )
    assert md.token_endpoint == "https://dome.example.org/verifier/oidc/token"


@pytest.fixture
def signer_kid(config: ClientConfig) -> str:
    return config.client_id


def _jwks(http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock) -> JwksCache:
    return JwksCache(http, MetadataCache(http, config, clock), config, clock)


async def test_a09_unknown_kid_refetches_once_then_fails(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    jwks = _jwks(http, config, clock)
    assert (await jwks.key_for(fake_as.key.kid)).export_public(as_dict=True)["x"]
    with pytest.raises(TokenValidationError) as info:
        await jwks.key_for("did:key:zDnaeUnknown")
    assert info.value.reason == "unknown_kid"
    assert fake_as.count("/oidc/jwks") == 2  # initial + one refetch


async def test_a09_rotation_just_before_signing_is_picked_up(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    jwks = _jwks(http, config, clock)
    await jwks.key_for(fake_as.key.kid)
    new_key = AsKey()
    fake_as.jwks_keys = [fake_as.key.jwk(), new_key.jwk()]
    got = await jwks.key_for(new_key.kid)
    assert got.export_public(as_dict=True)["x"] == new_key.jwk()["x"]


async def test_a09_unknown_kid_storm_fetches_at_most_once_per_minute(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    jwks = _jwks(http, config, clock)
    await jwks.key_for(fake_as.key.kid)
    for i in range(1000):
        with pytest.raises(TokenValidationError):
            await jwks.key_for(f"random-{i}")
    assert fake_as.count("/oidc/jwks") == 2
    clock.advance(61)
    with pytest.raises(TokenValidationError):
        await jwks.key_for("random-after-a-minute")
    assert fake_as.count("/oidc/jwks") == 3


async def test_a09_kid_absent_single_key_accepted_several_rejected(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    jwks = _jwks(http, config, clock)
    assert (await jwks.key_for(None)).export_public(as_dict=True)["x"] == fake_as.key.jwk()["x"]
    fake_as.jwks_keys = [AsKey().jwk(), AsKey().jwk(), AsKey().jwk()]
    jwks = _jwks(http, config, clock)
    with pytest.raises(TokenValidationError) as info:
        await jwks.key_for(None)
    assert info.value.reason == "ambiguous_kid"


async def test_a09_duplicate_kid_resolved_by_curve(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    other_curve = {"kty": "EC", "crv": "P-384", "kid": fake_as.key.kid, "x": "AA", "y": "AA"}
    rsa = {"kty": "RSA", "kid": fake_as.key.kid, "n": "AQAB", "e": "AQAB"}
    fake_as.jwks_keys = [other_curve, rsa, fake_as.key.jwk()]
    got = await _jwks(http, config, clock).key_for(fake_as.key.kid)
    assert got.export_public(as_dict=True)["crv"] == "P-256"


async def test_jwks_without_keys_array_is_rejected(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    fake_as.jwks_keys = ["not-an-object"]  # type: ignore[list-item]
    with pytest.raises(DiscoveryError) as info:
        await _jwks(http, config, clock).key_for(None)
    assert info.value.reason == "jwks_invalid"


async def test_discovery_transport_failure_is_retryable(
    config: ClientConfig, clock: FakeClock
) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(boom)) as http:
        with pytest.raises(AuthServerUnavailable) as info:
            await MetadataCache(http, config, clock).get()
    assert info.value.retryable


# --- endpoints on another origin than the issuer's ---------------------------------------------


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("token_endpoint", "https://token.example.net/oidc/token"),  # other host
        ("token_endpoint", "https://verifier.example.org:8443/oidc/token"),  # other port
        ("jwks_uri", "https://keys.example.net/jwks"),
        ("pushed_authorization_request_endpoint", "https://par.example.net/par"),
        ("revocation_endpoint", "https://revoke.example.net/revoke"),
    ],
)
async def test_endpoint_on_a_foreign_origin_is_refused_and_not_retryable(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    config: ClientConfig,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    field: str,
    url: str,
) -> None:
    fake_as.metadata = {**metadata_doc(), field: url}
    cache = MetadataCache(http, config, clock)
    with pytest.raises(EndpointOriginRefused) as info:
        await cache.get()
    assert isinstance(info.value, DiscoveryError)
    assert info.value.reason == "endpoint_origin_refused" and not info.value.retryable
    assert field in info.value.message
    assert [r.levelname for r in caplog.records if "endpoint_origin_refused" in r.getMessage()] == [
        "ERROR"
    ]


@pytest.mark.parametrize(
    ("field", "url", "allowed"),
    [
        ("token_endpoint", "https://token.example.net/oidc/token", "https://token.example.net"),
        ("jwks_uri", "https://KEYS.example.net:443/jwks", "https://keys.example.net"),
        (
            "pushed_authorization_request_endpoint",
            "https://par.example.net:8443/p",
            "https://par.example.net:8443",
        ),
    ],
)
async def test_endpoint_on_a_listed_origin_is_accepted(
    fake_as: FakeAS,
    http: httpx.AsyncClient,
    signer: SoftSigner,
    clock: FakeClock,
    field: str,
    url: str,
    allowed: str,
) -> None:
    config = ClientConfig(
        issuer=ISSUER,
        client_id=signer.kid,
        redirect_uri=REDIRECT_URI,
        allowed_endpoint_origins=frozenset({allowed}),
    )
    fake_as.metadata = {**metadata_doc(), field: url}
    md = await MetadataCache(http, config, clock).get()
    assert md.raw[field] == url


async def test_authorization_endpoint_is_not_origin_checked(
    fake_as: FakeAS, http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock
) -> None:
    """Only the user agent goes there; the authorization response's iss is checked instead."""
    url = "https://login.example.net/authorize"
    fake_as.metadata = {**metadata_doc(), "authorization_endpoint": url}
    md = await MetadataCache(http, config, clock).get()
    assert md.authorization_endpoint == url


@pytest.mark.parametrize(
    "origin",
    ["http://a.example", "https://a.example/path", "https://a.example#x", "https://", "a.example"],
)
def test_allowed_origins_are_validated(signer: SoftSigner, origin: str) -> None:
    with pytest.raises(ConfigError):
        ClientConfig(
            issuer=ISSUER,
            client_id=signer.kid,
            redirect_uri=REDIRECT_URI,
            allowed_endpoint_origins=frozenset({origin}),
        )
