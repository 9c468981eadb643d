"""Pushed Authorization Requests (RFC 9126): push a signed request object, get a request_uri."""

from __future__ import annotations

import httpx
from opentelemetry import trace
from opentelemetry.trace import Tracer

from broker.clock import Clock
from broker.errors import DiscoveryError, InvalidArgument, OAuthErrorResponse, UnexpectedResponse
from broker.keys.api import Signer
from broker.oauth import http as bounded
from broker.oauth.as_errors import AsErrorObserver, Endpoint, error_from_response
from broker.oauth.client_auth import client_assertion, client_auth_form
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata
from broker.oauth.skew import SkewMonitor

MAX_PAR_EXPIRES_IN = 3600


async def push_authorization_request(
    http: httpx.AsyncClient,
    signer: Signer,
    config: ClientConfig,
    metadata: ServerMetadata,
    clock: Clock,
    *,
    request_object: str,
    tracer: Tracer | None = None,
    skew: SkewMonitor | None = None,
    observer: AsErrorObserver | None = None,
) -> tuple[str, int]:
    """POST ``request=<signed request object>`` with client authentication (RFC 9126 section
    2.1; JAR with PAR, section 3) and return ``(request_uri, expires_in)`` (section 2.2).

    Strict: HTTP 201 (200 tolerated), ``request_uri`` a non-empty string, ``expires_in`` a
    positive integer. Errors as for the token endpoint (section 2.3). Sent once, no retry.
    """
    endpoint = metadata.pushed_authorization_request_endpoint
    if endpoint is None:
        raise DiscoveryError("the AS does not advertise a PAR endpoint", reason="no_par_endpoint")
    if not isinstance(request_object, str) or request_object.count(".") != 2:
        raise InvalidArgument("request_object must be a compact JWS")
    the_tracer = tracer or trace.get_tracer("broker.oauth")
    with the_tracer.start_as_current_span("oauth.par") as span:
        span.set_attribute("server.address", bounded.host_of(endpoint))
        assertion = await client_assertion(signer, config, metadata, now=clock.now())
        form = {"request": request_object, **client_auth_form(config.client_id, assertion)}
        resp = await bounded.request(
            http,
            "POST",
            endpoint,
            data=form,
            timeout=config.http_timeout,
            max_bytes=config.max_response_bytes,
        )
        span.set_attribute("http.response.status_code", resp.status_code)
        if resp.status_code not in (200, 201):
            err = error_from_response(
                resp,
                endpoint=Endpoint.PAR,
                now=clock.now(),
                client_id=config.client_id,
                skew=skew,
                observer=observer,
            )
            if isinstance(err, OAuthErrorResponse):
                span.set_attribute("oauth.error", err.error)
            span.set_status(trace.StatusCode.ERROR, err.reason)
            raise err
        doc = bounded.parse_json_object(resp)
        request_uri = doc.get("request_uri")
        if not isinstance(request_uri, str) or not request_uri:
            raise UnexpectedResponse(
                "PAR response has no request_uri", status_code=resp.status_code
            )
        expires_in = doc.get("expires_in")
        if (
            not isinstance(expires_in, int)
            or isinstance(expires_in, bool)
            or not 1 <= expires_in <= MAX_PAR_EXPIRES_IN
        ):
            raise UnexpectedResponse(
                "PAR expires_in is not a positive integer", status_code=resp.status_code
            )
        return request_uri, expires_in
