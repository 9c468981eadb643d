"""The HTTPS listener of ``broker serve`` from ``[web]``: request objects, the redirect_uri
callback, the start links and, when configured, the JWKS route."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace

from broker.app.settings import kid_format
from broker.config import Settings
from broker.keys.didkey import public_key_from_did
from broker.login import LoginService
from broker.oauth.config import ClientConfig
from broker.web.app import create_app
from broker.web.jwks import JwksEndpoint, StaticKeys
from broker.web.links import BrowserLinks
from broker.web.server import TlsFiles, WebServer


def jwks_endpoint(
    settings: Settings, did: str, other_dids: Sequence[str] = ()
) -> JwksEndpoint | None:
    """The ``[web].jwks_path`` route publishing the client key, then the other identities'
    keys of a rotation in progress (None when turned off)."""
    w = settings.web
    if w.jwks_path is None:
        return None
    return JwksEndpoint(
        StaticKeys(tuple(public_key_from_did(d) for d in (did, *other_dids))),
        kid_format=kid_format(settings),
        path=w.jwks_path,
        max_age=w.jwks_max_age,
    )


def web_server(
    settings: Settings,
    logins: LoginService,
    config: ClientConfig,
    links: BrowserLinks,
    *,
    did: str,
    other_dids: Sequence[str],
    tracer_provider: trace.TracerProvider | None,
) -> WebServer:
    """The listener, not started yet."""
    w = settings.web
    tls = TlsFiles(str(w.tls_cert), str(w.tls_key)) if w.tls_cert and w.tls_key else None
    return WebServer(
        create_app(
            logins,
            redirect_uri=config.redirect_uri,
            post_login_url=w.post_login_url,
            tracer_provider=tracer_provider,
            jwks=jwks_endpoint(settings, did, other_dids),
            links=links,
        ),
        host=w.host,
        port=w.port,
        tls=tls,
    )
