"""Authorization-server checks: discovery (issuer exact, A01), the JWKS, the DOME did pre-flight
(DOME-PROFILE.md: ``GET {issuer}/oidc/did/{our did}`` must return our x/y) and the clock skew
against the AS's HTTP ``Date`` header (RFC 9110 section 6.6.1; TEST-CATALOGUE C09).

Discovery goes through :class:`broker.oauth.metadata.MetadataCache` with the ClientConfig serve
builds, so the doctor rejects exactly what serve would reject.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from broker.app.oauth import client_config
from broker.clock import Clock
from broker.config import Settings
from broker.doctor.net import network_failed
from broker.doctor.result import CheckResult, fail, failed, ok, skip, warn
from broker.errors import (
    AuthServerUnavailable,
    BrokerError,
    DiscoveryError,
    TokenValidationError,
)
from broker.keys.didkey import jwk_from_did
from broker.oauth import http as bounded
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import JwksCache, MetadataCache, ServerMetadata, discovery_url
from broker.oauth.origins import OriginVerdict, endpoint_origins

SKEW_WARN_SECONDS = 5.0
_MAX_SHOWN = 120  # characters of an AS-supplied value shown in a detail


def as_config(settings: Settings, did: str | None) -> ClientConfig:
    """The ClientConfig serve builds. Discovery, JWKS and the skew probe do not use the client
    id, so when the key could not be read, or differs from ``[oauth].client_id`` (reported by
    ``hsm.client_id``), the configured client id stands in."""
    configured = settings.oauth.client_id
    if did is not None and configured in (None, did):
        client_id = did
    else:
        client_id = configured or did or "did:key:unknown"
    return client_config(settings, client_id)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


async def _raw_discovery(http: httpx.AsyncClient, config: ClientConfig) -> bounded.HttpResponse:
    return await bounded.request(
        http,
        "GET",
        discovery_url(config.issuer),
        timeout=config.http_timeout,
        max_bytes=config.max_response_bytes,
    )


@dataclass(frozen=True)
class Discovery:
    result: CheckResult
    cache: MetadataCache
    metadata: ServerMetadata | None  # None when the check failed
    reachable: bool  # the AS answered HTTP at all


async def discovery(http: httpx.AsyncClient, config: ClientConfig, clock: Clock) -> Discovery:
    """``as.discovery``: metadata fetched and valid, issuer byte-for-byte the configured one."""
    cache = MetadataCache(http, config, clock)
    try:
        md = await cache.get()
    except DiscoveryError as exc:
        if exc.reason == "issuer_mismatch":
            return Discovery(await _issuer_mismatch(http, config), cache, None, True)
        return Discovery(failed("as.discovery", exc), cache, None, True)
    except AuthServerUnavailable as exc:
        url = discovery_url(config.issuer)
        return Discovery(network_failed("as.discovery", exc, "GET", url), cache, None, False)
    except BrokerError as exc:
        url = discovery_url(config.issuer)
        return Discovery(failed("as.discovery", exc, f"GET {url}"), cache, None, True)
    return Discovery(ok("as.discovery", f"issuer {md.issuer} (exact match)"), cache, md, True)


async def _issuer_mismatch(http: httpx.AsyncClient, config: ClientConfig) -> CheckResult:
    """Name both issuers: the one configured and the one the AS advertises (not secret)."""
    advertised: object = "unknown"
    try:
        doc = bounded.parse_json_object(await _raw_discovery(http, config))
        advertised = doc.get("issuer")
    except BrokerError:
        pass
    return fail(
        "as.discovery",
        f"issuer mismatch: configured {config.issuer!r}, the AS advertises {_shown(advertised)} "
        "(exact string compare, OIDC Discovery 4.3) [issuer_mismatch]",
    )


async def endpoints(http: httpx.AsyncClient, config: ClientConfig, found: Discovery) -> CheckResult:
    """``as.endpoints``: the origin of every endpoint the broker sends credentials to or takes
    keys from (token, PAR, JWKS, revocation) and the verdict serve's metadata load gives it:
    the issuer's, allowed by ``[oauth].allowed_endpoint_origins``, or refused."""
    if found.metadata is not None:
        doc: dict[str, Any] = dict(found.metadata.raw)
    elif not found.reachable:
        return skip("as.endpoints", "the AS is unreachable")
    else:
        try:
            doc = bounded.parse_json_object(await _raw_discovery(http, config))
        except BrokerError as exc:
            return failed("as.endpoints", exc, "discovery document")
    verdicts = endpoint_origins(doc, issuer=config.issuer, allowed=config.allowed_endpoint_origins)
    detail = "; ".join(f"{v.name} {v.origin} ({v.verdict})" for v in verdicts)
    if any(v.verdict is OriginVerdict.REFUSED for v in verdicts):
        return fail("as.endpoints", f"{detail} [endpoint_origin_refused]")
    return ok("as.endpoints", detail or "no token, PAR, JWKS or revocation endpoint advertised")


async def jwks(
    http: httpx.AsyncClient, cache: MetadataCache, config: ClientConfig, clock: Clock
) -> CheckResult:
    """``as.jwks``: the JWKS answers and holds at least one usable ES256 / P-256 key."""
    keys = JwksCache(http, cache, config, clock)
    try:
        await keys.key_for(None)
    except TokenValidationError as exc:
        if exc.reason == "ambiguous_kid":  # several usable keys: selected by kid at runtime
            return ok("as.jwks", "several usable ES256/P-256 keys")
        return fail(
            "as.jwks", "no usable ES256/P-256 key: id_tokens could not be verified [no_es256_key]"
        )
    except AuthServerUnavailable as exc:
        url = (await cache.get()).jwks_uri
        return network_failed("as.jwks", exc, "GET", url)
    except BrokerError as exc:
        return failed("as.jwks", exc)
    return ok("as.jwks", "one usable ES256/P-256 key")


def dome_did_url(issuer: str, did: str) -> str:
    return issuer.removesuffix("/") + "/oidc/did/" + quote(did, safe=":")


async def dome_did(http: httpx.AsyncClient, config: ClientConfig, did: str) -> CheckResult:
    """``as.dome_did``: the Verifier's did endpoint returns a JWKS whose key is ours (x and y).

    404: not a DOME Verifier (e.g. oidc-provider) -> warn. Another key -> fail: the
    ``jwkSetUrl``-names-another-did bug of DOME-PROFILE.md (login passes, /token gives 401).
    """
    url = dome_did_url(config.issuer, did)
    try:
        resp = await bounded.request(
            http,
            "GET",
            url,
            timeout=config.http_timeout,
            max_bytes=config.max_response_bytes,
            accept="application/jwk-set+json, application/json",
        )
    except BrokerError as exc:
        return network_failed("as.dome_did", exc, "GET", url)
    if resp.status_code == 404:
        return warn(
            "as.dome_did", "no /oidc/did endpoint (404): not a DOME Verifier, pre-flight skipped"
        )
    if resp.status_code != 200:
        return fail("as.dome_did", f"GET {url} answered HTTP {resp.status_code}")
    try:
        doc = bounded.parse_json_object(resp)
    except BrokerError as exc:
        return failed("as.dome_did", exc, f"GET {url}")
    found = doc.get("keys")
    if not isinstance(found, list) or not found:
        return fail("as.dome_did", "the did endpoint answered without a 'keys' array")
    ours = jwk_from_did(did)
    if any(_same_key(k, ours) for k in found):
        return ok("as.dome_did", "the Verifier derives our public key (x, y) from our did")
    return fail(
        "as.dome_did",
        "the Verifier's JWKS for our did holds another key: assertions would fail with "
        "invalid_client (check jwkSetUrl in the trusted services list)",
    )


def _same_key(key: Any, ours: dict[str, str]) -> bool:
    return (
        isinstance(key, dict)
        and key.get("kty") == "EC"
        and key.get("crv", "P-256") == "P-256"
        and key.get("x") == ours["x"]
        and key.get("y") == ours["y"]
    )


async def clock_skew(
    http: httpx.AsyncClient,
    config: ClientConfig,
    clock: Clock,
    *,
    warn_above: float = SKEW_WARN_SECONDS,
) -> CheckResult:
    """``as.clock_skew``: our clock against the AS's ``Date`` header.

    ``Date`` has a one-second resolution: the AS's time lies in ``[date, date + 1)``; the local
    time of the exchange lies in ``[before, after]``. Overlapping intervals mean no measurable
    skew; otherwise the gap between them is the skew. Warn above ``warn_above`` seconds, fail
    above the configured ``[oauth].clock_skew`` (the tolerance of every JWT check).
    """
    before = clock.now()
    try:
        resp = await _raw_discovery(http, config)
    except BrokerError as exc:
        return network_failed("as.clock_skew", exc, "GET", discovery_url(config.issuer))
    after = clock.now()
    header = resp.headers.get("date")
    if header is None:
        return warn("as.clock_skew", "the AS sent no Date header: skew unknown")
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return warn("as.clock_skew", "the AS sent an unparseable Date header: skew unknown")
    if when.tzinfo is None:
        return warn("as.clock_skew", "the AS Date header has no time zone: skew unknown")
    server = when.timestamp()
    if after < server:
        skew = after - server  # we are behind
    elif before > server + 1.0:
        skew = before - (server + 1.0)  # we are ahead
    else:
        skew = 0.0
    where = "ahead of" if skew > 0 else "behind"
    text = f"local clock {abs(skew):.1f} s {where} the AS" if skew else "no measurable skew"
    if abs(skew) > config.clock_skew:
        return fail(
            "as.clock_skew",
            f"{text}: over the configured clock_skew of {config.clock_skew:g} s (fix NTP)",
        )
    if abs(skew) > warn_above:
        return warn("as.clock_skew", f"{text}: over {warn_above:g} s (check NTP)")
    return ok("as.clock_skew", text)
