"""Start links: the authorization URL a caller hands to its user points at the broker first.

``{public_base_url}/start/{token}`` answers 303 to the login's current authorization URL and
sets a short-lived cookie naming the login (``__Host-`` prefixed, Secure, HttpOnly,
SameSite=Lax, Path=/). When the user agent later lands on the broker's base URL with that
cookie while the login is still pending (the DOME Verifier sends users there when its login
page times out), the broker knows which login was abandoned and ends it at once instead of
letting it wait for its expiry.

The token is ``{login_id}.{mac}``: an HMAC-SHA256 (truncated to 128 bits) of the login id keyed
by the login's current authorization URL, a secret only the login's owner, its user agent and
the login store know. So neither the link nor the cookie can be made from a login id alone, and
any replica that reads the same login store checks them (no key of its own). A token is good
while its login is pending with that authorization URL: a restarted login gets a new one (the
callback that restarts it sets the new cookie).

:class:`LinkedLogins` wraps the login service for the gRPC adapter: every pending login it
returns carries the start link instead of the authorization server's URL.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import math
import re
from collections.abc import Callable
from typing import Protocol

from broker.clock import Clock
from broker.errors import InvalidArgument
from broker.login import LoginState, LoginView

START_PATH = "/start/"
COOKIE_NAME = "__Host-broker-login"
_LOGIN_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_MAC = re.compile(r"^[A-Za-z0-9_\-]{22}$")
_CONTEXT = b"broker start link v1\x00"


class BrowserLinks:
    """Makes and checks start-link tokens and the cookie that carries one."""

    def __init__(self, public_base_url: str, clock: Clock) -> None:
        if not public_base_url.startswith(("https://", "http://")) or public_base_url.endswith("/"):
            raise InvalidArgument("public_base_url must be an absolute URL without a trailing '/'")
        self._base = public_base_url
        self._clock = clock

    def __repr__(self) -> str:
        return f"BrowserLinks(base={self._base!r})"

    @staticmethod
    def token(view: LoginView) -> str | None:
        """The token of a pending login (``None`` once it has no authorization URL)."""
        if view.state is not LoginState.PENDING or not view.authorization_url:
            return None
        if not _LOGIN_ID.fullmatch(view.login_id):
            raise InvalidArgument("not a login id")
        return f"{view.login_id}.{_mac(view.authorization_url, view.login_id)}"

    @staticmethod
    def login_id(token: str | None) -> str | None:
        """The login id ``token`` claims to name (not checked: see :meth:`matches`)."""
        if not token or len(token) > 128:
            return None
        login_id, _, mac = token.rpartition(".")
        if not _LOGIN_ID.fullmatch(login_id) or not _MAC.fullmatch(mac):
            return None
        return login_id

    @staticmethod
    def matches(token: str | None, view: LoginView) -> bool:
        """Whether ``token`` is the token of ``view``, a pending login (constant-time)."""
        expected = BrowserLinks.token(view)
        return expected is not None and token is not None and hmac.compare_digest(token, expected)

    def url(self, view: LoginView) -> str | None:
        token = self.token(view)
        return f"{self._base}{START_PATH}{token}" if token is not None else None

    def set_cookie(self, view: LoginView) -> str | None:
        """A ``Set-Cookie`` value naming the pending login ``view`` until it expires."""
        token = self.token(view)
        if token is None:
            return None
        max_age = max(1, math.ceil(view.expires_at - self._clock.now()))
        return f"{COOKIE_NAME}={token}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax"

    @staticmethod
    def clear_cookie() -> str:
        return f"{COOKIE_NAME}=; Max-Age=0; Path=/; Secure; HttpOnly; SameSite=Lax"

    def linked(self, view: LoginView) -> LoginView:
        """``view`` with the start link as its authorization URL while it is pending."""
        url = self.url(view)
        return view if url is None else dataclasses.replace(view, authorization_url=url)


def _mac(authorization_url: str, login_id: str) -> str:
    key = hashlib.sha256(_CONTEXT + authorization_url.encode("utf-8")).digest()
    digest = hmac.new(key, login_id.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


class CallerLogins(Protocol):
    """The part of :class:`broker.login.LoginService` the gRPC adapter calls."""

    async def start(self, *, label: str | None = None, owner: str | None = None) -> LoginView: ...

    async def complete(
        self,
        *,
        code: str | None,
        state: str | None,
        iss: str | None,
        error: str | None = None,
        owner: str | None = None,
        authorize: Callable[[str], None] | None = None,
    ) -> LoginView: ...

    async def get(self, login_id: str, *, owner: str | None = None) -> LoginView: ...


class LinkedLogins:
    """The login service as the gRPC adapter sees it: pending logins carry start links."""

    def __init__(self, logins: CallerLogins, links: BrowserLinks) -> None:
        self._logins = logins
        self._links = links

    def __repr__(self) -> str:
        return f"LinkedLogins({self._logins!r})"

    async def start(self, *, label: str | None = None, owner: str | None = None) -> LoginView:
        return self._links.linked(await self._logins.start(label=label, owner=owner))

    async def complete(
        self,
        *,
        code: str | None,
        state: str | None,
        iss: str | None,
        error: str | None = None,
        owner: str | None = None,
        authorize: Callable[[str], None] | None = None,
    ) -> LoginView:
        view = await self._logins.complete(
            code=code, state=state, iss=iss, error=error, owner=owner, authorize=authorize
        )
        return self._links.linked(view)

    async def get(self, login_id: str, *, owner: str | None = None) -> LoginView:
        return self._links.linked(await self._logins.get(login_id, owner=owner))
