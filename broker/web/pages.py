"""The HTML pages of the HTTPS listener, and the headers every HTML response carries.

A person lands on the listener in three ways: the start link (which sends them on to the
authorization server), the redirect_uri callback (the outcome of the login), and the base URL
(the DOME Verifier sends users there when its login page times out). Each gets one small page:
plain HTML, one inline ``<style>`` element allowed by its hash, no script, no external asset, no
form. Pages never show a code, state, token, request object or login id; every text is
HTML-escaped.

:class:`HtmlSecurityHeaders` is the one place that puts the security headers on the listener's
HTML responses: it wraps the whole app and rewrites the headers of any ``text/html`` response.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTML_MEDIA_TYPE = "text/html; charset=utf-8"

_STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;"
    "background:#f4f5f7;color:#1f2328}"
    "main{max-width:34rem;margin:12vh auto;padding:2rem 2.25rem;background:#fff;"
    "border-radius:8px;border-top:6px solid #57606a;box-shadow:0 1px 3px rgba(0,0,0,.12)}"
    "main.ok{border-top-color:#1a7f37}main.bad{border-top-color:#cf222e}"
    "main.wait{border-top-color:#9a6700}"
    "h1{font-size:1.5rem;margin:0 0 1rem}p{line-height:1.5;margin:.5rem 0}"
    "p.reason{color:#57606a;font-size:.875rem;margin-top:1.5rem}"
    "code{font-family:ui-monospace,monospace}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode("utf-8")).digest()).decode("ascii")

CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

_START_AGAIN = "Go back to the application that sent you here and start a new login."

# Reason codes of broker.errors shown to a person; anything else gets the generic text.
_HUMAN_REASONS: Mapping[str, str] = {
    "missing_state": "The answer from the sign-in service does not belong to any login.",
    "unknown_state": "This answer does not belong to a login in progress: it is unknown, "
    "was already used, or the login was restarted.",
    "state_replayed": "This login was already answered; an answer counts only once.",
    "iss_mismatch": "The answer did not come from the expected sign-in service.",
    "iss_missing": "The answer did not say which sign-in service sent it.",
    "missing_code": "The sign-in service answered without an authorization code.",
    "duplicate_parameter": "The answer from the sign-in service was malformed.",
    "authorization_error": "The sign-in service refused or cancelled the login.",
    "invalid_grant": "The sign-in service did not accept the authorization it had issued.",
    "client_authentication_failed": "The sign-in service did not accept this broker's "
    "credentials. The operator of the broker has to fix its registration.",
    "login_abandoned": "The login was abandoned before the sign-in finished.",
    "login_expired": "The login expired before the sign-in finished.",
}
_UNAVAILABLE = (
    "The broker could not finish the login because a service it depends on is unavailable "
    "right now."
)


@dataclass(frozen=True)
class Page:
    """One page: a title (also the heading), paragraphs of plain text, a tone for the colour
    bar (``ok``, ``bad``, ``wait`` or ``plain``), and an optional reason code shown small."""

    title: str
    paragraphs: tuple[str, ...]
    tone: str = "plain"
    reason: str | None = None


def render(page: Page) -> str:
    """The page as an HTML document; every text escaped."""
    title = html.escape(page.title)
    body = "".join(f"<p>{html.escape(p)}</p>" for p in page.paragraphs)
    if page.reason:
        body += f'<p class="reason">Reason code: <code>{html.escape(page.reason)}</code></p>'
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{_STYLE}</style></head>"
        f'<body><main class="{html.escape(page.tone)}"><h1>{title}</h1>{body}</main></body></html>'
    )


def html_response(page: Page, status: int, headers: Mapping[str, str] | None = None) -> Response:
    """``page`` as a ``text/html; charset=utf-8`` response (the security headers are added by
    :class:`HtmlSecurityHeaders`)."""
    return Response(
        render(page).encode("utf-8"),
        status_code=status,
        headers=dict(headers or {}),
        media_type=HTML_MEDIA_TYPE,
    )


# --- the pages ----------------------------------------------------------------------------


def landing() -> Page:
    return Page(
        "Token broker",
        (
            "This is the sign-in endpoint of a token broker. There is nothing to do here.",
            "If you were signing in, that login is no longer in progress. " + _START_AGAIN,
        ),
    )


def completed() -> Page:
    return Page(
        "Login complete",
        ("The login completed. You can close this window.",),
        tone="ok",
    )


def restarting() -> Page:
    return Page(
        "Restarting the login",
        ("The sign-in service asked for a new login. Your browser is taken back to it.",),
        tone="wait",
    )


def redirecting() -> Page:
    return Page("Signing in", ("Your browser is taken to the sign-in service.",), tone="wait")


def expired() -> Page:
    return Page(
        "Login expired",
        ("This login took too long and expired.", _START_AGAIN),
        tone="bad",
        reason="login_expired",
    )


def abandoned() -> Page:
    return Page(
        "Login abandoned",
        (
            "You came back here before the sign-in finished, so this login was abandoned.",
            "The application that sent you here has to start a new login.",
        ),
        tone="bad",
        reason="login_abandoned",
    )


def failed(reason: str, *, retryable: bool = False) -> Page:
    """The login did not complete; ``reason`` is a broker reason code (shown as is, escaped)."""
    if reason == "login_expired":
        return expired()
    human = _UNAVAILABLE if retryable else _HUMAN_REASONS.get(reason, "The login did not complete.")
    return Page("Login failed", (human, _START_AGAIN), tone="bad", reason=reason)


def unknown_link() -> Page:
    return Page(
        "Unknown login link",
        ("This login link is not valid, or its login is over.", _START_AGAIN),
        tone="bad",
    )


# --- the headers --------------------------------------------------------------------------


class HtmlSecurityHeaders:
    """ASGI middleware: every ``text/html`` response leaves with :data:`SECURITY_HEADERS`
    (replacing any of the same names the handler set)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._names = {name.lower().encode("latin-1") for name in SECURITY_HEADERS}
        self._raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in SECURITY_HEADERS.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", []))
                if any(
                    name.lower() == b"content-type" and value.lower().startswith(b"text/html")
                    for name, value in headers
                ):
                    kept = [(n, v) for n, v in headers if n.lower() not in self._names]
                    message = {**message, "headers": kept + self._raw}
            await send(message)

        await self._app(scope, receive, send_with_headers)
