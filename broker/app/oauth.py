"""The OAuth client's side of ``broker serve``, built from settings: its
:class:`~broker.oauth.config.ClientConfig` and the outbound HTTP client to the authorization
server. ``broker doctor`` and the rotation ceremony build theirs here too, so they reject
exactly what serve would.

No gRPC: the doctor imports this module (tests/test_import_contract.py).
"""

from __future__ import annotations

import ssl

import httpx

from broker.config import Settings
from broker.errors import ConfigError
from broker.oauth.config import ClientConfig


def client_config(settings: Settings, did: str) -> ClientConfig:
    o = settings.oauth
    if o.client_id is not None and o.client_id != did:
        raise ConfigError(
            "[oauth].client_id differs from the did:key of the configured key "
            "(the Verifier would reject every assertion)"
        )
    return ClientConfig(
        issuer=o.issuer,
        client_id=did,
        redirect_uri=o.redirect_uri,
        scope=o.scope,
        use_pkce=o.use_pkce,
        use_par=o.use_par,
        dome_compat=o.dome_compat,
        clock_skew=o.clock_skew,
        http_timeout=o.http_timeout,
        max_response_bytes=o.max_response_bytes,
        max_jwt_bytes=o.max_jwt_bytes,
        allow_http_issuer=o.allow_insecure_http,
        allowed_endpoint_origins=frozenset(o.allowed_endpoint_origins),
    )


def http_client(settings: Settings) -> httpx.AsyncClient:
    """The outbound client to the AS: TLS verified (extra CA optional), no redirects followed."""
    context = ssl.create_default_context()
    if settings.oauth.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.oauth.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return httpx.AsyncClient(
        verify=context,
        follow_redirects=False,
        timeout=httpx.Timeout(settings.oauth.http_timeout),
        trust_env=False,
    )
