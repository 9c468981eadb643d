"""The HTTPS listener (Starlette): request objects by reference and the redirect_uri callback.

Routes, and nothing else:
- ``GET /request-objects/{ref}``: the compact JWS of a pending login (RFC 9101 section 5.2),
  ``Content-Type: application/oauth-authz-req+jwt``, ``Cache-Control: no-store``; 404 for an
  unknown, completed or expired ref (the lookup is constant-time), 405 for other methods.
- ``GET {callback path}``: the authorization response (RFC 6749 section 4.1.2); a short HTML page,
  or a 303 to the configured post-login URL (never to a caller-supplied URL), or, when a DOME
  login was restarted, a 303 to the new authorization URL the broker made.
- ``GET /``: a landing page (the DOME Verifier sends users to the broker's base URL when its
  login page times out); with the start-link cookie of a pending login, that login ends as
  FAILED ``login_abandoned`` and the page says so.
- ``GET /start/{token}`` (when ``links`` is given): sets the start-link cookie and answers 303
  to the login's current authorization URL (:mod:`broker.web.links`).
- ``GET /healthz``: 200 ``ok``.
- ``GET [web].jwks_path`` (when configured): the client's public key set (:mod:`broker.web.jwks`).

Pages and the headers of every HTML response: :mod:`broker.web.pages`. Nothing here logs a
query string (it carries the code and state); uvicorn's access log is off.
"""

from __future__ import annotations

from typing import Protocol
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Tracer, TracerProvider
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from broker.errors import AuthorizationDenied, BrokerError, InvalidArgument
from broker.login import LoginState, LoginView
from broker.web import pages
from broker.web.jwks import JWK_SET_MEDIA_TYPE, JwksEndpoint, etag_matches
from broker.web.links import COOKIE_NAME, START_PATH, BrowserLinks
from broker.web.pages import HtmlSecurityHeaders, html_response

REQUEST_OBJECT_MEDIA_TYPE = "application/oauth-authz-req+jwt"
_CALLBACK_PARAMS = ("code", "state", "iss", "error")
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


class LoginEndpoint(Protocol):
    """The part of :class:`broker.login.LoginService` the listener calls."""

    async def request_object(self, ref: str) -> str | None: ...

    async def get(self, login_id: str) -> LoginView: ...

    async def abandon(self, login_id: str) -> LoginView | None: ...

    async def complete(
        self, *, code: str | None, state: str | None, iss: str | None, error: str | None = None
    ) -> LoginView: ...


def callback_path_of(redirect_uri: str) -> str:
    """The path part of the configured redirect_uri (the route the callback is served on)."""
    path = urlsplit(redirect_uri).path or "/"
    if not path.startswith("/") or _reserved(path):
        raise InvalidArgument("redirect_uri path collides with another route of the listener")
    return path


def _reserved(path: str) -> bool:
    return path in ("/", "/healthz") or path.startswith(("/request-objects/", START_PATH))


def _restart_page(view: LoginView) -> pages.Page:
    """What the 303 of a restarted login says: a transient failure of the sign-in service's
    token endpoint, or the DOME restart (``invalid_grant``)."""
    if view.restart_reason is not None and view.restart_reason != "invalid_grant":
        return pages.Page(
            "Restarting the login",
            (
                "The sign-in service had a temporary problem finishing your login. "
                "Your browser is taken back to it to sign in again.",
            ),
            tone="wait",
            reason=view.restart_reason,
        )
    return pages.restarting()


def _see_other(url: str, page: pages.Page, headers: dict[str, str] | None = None) -> Response:
    """303 to ``url`` with a small page for the rare user agent that shows it (no link: the
    URL may carry a state)."""
    return html_response(page, 303, {**(headers or {}), "Location": url})


def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404, headers={"Cache-Control": "no-store"})


def create_app(
    login: LoginEndpoint,
    *,
    redirect_uri: str,
    post_login_url: str | None = None,
    tracer_provider: TracerProvider | None = None,
    jwks: JwksEndpoint | None = None,
    links: BrowserLinks | None = None,
) -> Starlette:
    """Build the listener app. ``post_login_url`` is fixed configuration (C10); ``jwks`` adds
    the key set route; ``links`` adds the start-link route and lets ``/`` end an abandoned
    login."""
    callback_path = callback_path_of(redirect_uri)
    if jwks is not None and (_reserved(jwks.path) or jwks.path == callback_path):
        raise InvalidArgument("the JWKS path collides with another route of the listener")
    if post_login_url is not None and urlsplit(post_login_url).scheme not in ("https", "http"):
        raise InvalidArgument("post_login_url must be an absolute http(s) URL")
    tracer: Tracer = trace.get_tracer("broker.web", tracer_provider=tracer_provider)

    async def request_object(request: Request) -> Response:
        with tracer.start_as_current_span("web.request_object") as span:
            if request.method != "GET":
                span.set_attribute("http.status_code", 405)
                return PlainTextResponse(
                    "method not allowed", status_code=405, headers={"Allow": "GET"}
                )
            jws = await login.request_object(str(request.path_params.get("ref", "")))
            status = 200 if jws is not None else 404
            span.set_attribute("http.status_code", status)
            if jws is None:
                return _not_found()
            return Response(
                jws.encode("ascii"),
                status_code=200,
                media_type=REQUEST_OBJECT_MEDIA_TYPE,
                headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
            )

    async def callback(request: Request) -> Response:
        with tracer.start_as_current_span("web.callback") as span:
            if request.method != "GET":
                span.set_attribute("http.status_code", 405)
                return PlainTextResponse(
                    "method not allowed", status_code=405, headers={"Allow": "GET"}
                )
            query = request.query_params
            values: dict[str, str | None] = {}
            for name in _CALLBACK_PARAMS:
                got = query.getlist(name)
                if len(got) > 1:
                    span.set_attribute("oauth.error", "duplicate_parameter")
                    span.set_attribute("http.status_code", 400)
                    return html_response(pages.failed("duplicate_parameter"), 400)
                values[name] = got[0] if got else None
            try:
                view = await login.complete(
                    code=values["code"],
                    state=values["state"],
                    iss=values["iss"],
                    error=values["error"],
                )
            except BrokerError as exc:
                span.set_attribute("oauth.error", exc.reason)
                if isinstance(exc, AuthorizationDenied):
                    span.set_attribute("oauth.as_error", exc.error)
                # Our side's trouble (AS down, HSM, audit trail): 503, the user may retry.
                status = 503 if exc.retryable else 400
                span.set_attribute("http.status_code", status)
                return html_response(pages.failed(exc.reason, retryable=exc.retryable), status)
            span.set_attribute("login.state", str(view.state))
            if view.state is LoginState.PENDING and view.authorization_url:
                # DOME compatibility restart: send the user agent to the new request we made.
                span.set_attribute("login.restarted", True)
                span.set_attribute("http.status_code", 303)
                # The restarted login has a new start-link token: this browser carries it on.
                cookie = links.set_cookie(view) if links is not None else None
                return _see_other(
                    view.authorization_url,
                    _restart_page(view),
                    {"Set-Cookie": cookie} if cookie is not None else None,
                )
            if view.state is not LoginState.COMPLETED:
                span.set_attribute("http.status_code", 400)
                return html_response(pages.failed(view.error or "login_failed"), 400)
            if view.grant_id:
                span.set_attribute("grant.id", view.grant_id)
            done: dict[str, str] = {}
            if links is not None and COOKIE_NAME in request.cookies:
                # Its login is over (this one) or was not this browser's latest: nothing left
                # for the landing page to abandon through it.
                done["Set-Cookie"] = links.clear_cookie()
            if post_login_url is not None:
                span.set_attribute("http.status_code", 303)
                return _see_other(post_login_url, pages.completed(), done)
            span.set_attribute("http.status_code", 200)
            return html_response(pages.completed(), 200, done)

    async def landing(request: Request) -> Response:
        with tracer.start_as_current_span("web.landing") as span:
            cookie = request.cookies.get(COOKIE_NAME)
            if links is None or cookie is None or request.method != "GET":
                return html_response(pages.landing(), 200)
            page = pages.landing()
            login_id = links.login_id(cookie)
            try:
                view = await login.get(login_id) if login_id is not None else None
            except BrokerError:
                view = None
            if view is not None and links.matches(cookie, view):
                ended = await login.abandon(view.login_id)
                if ended is not None and ended.error == "login_abandoned":
                    span.set_attribute("login.abandoned", True)
                    page = pages.abandoned()
            return html_response(page, 200, {"Set-Cookie": links.clear_cookie()})

    async def start_link(request: Request) -> Response:
        assert links is not None
        with tracer.start_as_current_span("web.start") as span:
            if request.method != "GET":
                span.set_attribute("http.status_code", 405)
                return PlainTextResponse(
                    "method not allowed", status_code=405, headers={"Allow": "GET"}
                )
            token = str(request.path_params.get("token", ""))
            login_id = links.login_id(token)
            try:
                view = await login.get(login_id) if login_id is not None else None
            except BrokerError:
                view = None
            cookie = links.set_cookie(view) if view is not None else None
            if view is None or cookie is None or not view.authorization_url:
                # Unknown, forged, or its login is over or restarted: the same answer for all,
                # so that a login id alone tells nothing about its login.
                span.set_attribute("http.status_code", 404)
                return html_response(pages.unknown_link(), 404)
            if not links.matches(token, view):
                span.set_attribute("http.status_code", 404)
                return html_response(pages.unknown_link(), 404)
            span.set_attribute("http.status_code", 303)
            return _see_other(view.authorization_url, pages.redirecting(), {"Set-Cookie": cookie})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok", headers={"Cache-Control": "no-store"})

    async def key_set(request: Request) -> Response:
        assert jwks is not None
        with tracer.start_as_current_span("web.jwks") as span:
            if request.method not in ("GET", "HEAD"):
                span.set_attribute("http.status_code", 405)
                return PlainTextResponse(
                    "method not allowed", status_code=405, headers={"Allow": "GET, HEAD"}
                )
            doc = jwks.document()
            headers = {
                "Cache-Control": f"public, max-age={jwks.max_age}",
                "ETag": doc.etag,
                "X-Content-Type-Options": "nosniff",
            }
            if_none_match = request.headers.get("if-none-match")
            if if_none_match is not None and etag_matches(if_none_match, doc.etag):
                span.set_attribute("http.status_code", 304)
                return Response(status_code=304, headers=headers)
            span.set_attribute("http.status_code", 200)
            return Response(
                doc.body, status_code=200, media_type=JWK_SET_MEDIA_TYPE, headers=headers
            )

    routes = [
        Route("/request-objects/{ref}", request_object, methods=["GET", "HEAD"]),
        Route(callback_path, callback, methods=["GET", "HEAD"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/", landing, methods=["GET", "HEAD"]),
    ]
    if links is not None:
        routes.append(Route(START_PATH + "{token}", start_link, methods=["GET", "HEAD"]))
    if jwks is not None:
        # Every standard method reaches the handler, so that its 405 is the one answered.
        routes.append(Route(jwks.path, key_set, methods=_HTTP_METHODS))
    return Starlette(routes=routes, middleware=[Middleware(HtmlSecurityHeaders)])
