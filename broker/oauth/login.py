"""Interactive login: the authorization code flow with request objects by reference.

One login = one authorization request (RFC 6749 section 4.1, OIDC Core 3.1.2) whose parameters
travel in an HSM-signed request object (RFC 9101) that the broker publishes at a fresh,
unguessable, one-login ``request_uri`` on its HTTPS listener (or pushes with PAR, RFC 9126,
when configured and advertised). The authorization response (RFC 6749 section 4.1.2, RFC 9207
``iss``) is checked against the pending login found by its single-use ``state`` (RFC 9700
section 2.1), and the code is exchanged at once (DOME-PROFILE.md: codes are exchanged
immediately) inside the client's exchange gate, so that no refresh of the same client runs
between the code's issue and its exchange (DOME Verifier bug 1).

Ownership: a login belongs to the caller that started it (``owner``, the caller identity the
gRPC adapter names). Asked on behalf of an owner, :meth:`LoginService.get` and
:meth:`LoginService.complete` see only that owner's logins; another owner's login is
indistinguishable from an unknown one (:class:`LoginNotFound`, same message). The browser
callback on the HTTPS listener asks on behalf of no owner: there the ``state`` itself is the
capability.

A rejected authorization response (unknown state, other owner, label refused, wrong or missing
``iss``, no code) changes nothing: the login stays pending with its state, request object and
authorization URL. Only an outcome that ends this login changes it: the AS's ``error=`` answer
(with an acceptable ``iss``), a failed code exchange, a failed grant store.

DOME compatibility: when a fresh code fails with ``invalid_grant`` (the Verifier overwrote the
pending authorization), the login restarts once: a new request object and authorization URL
are published under the same login id.

Secrets (code, state, nonce, code verifier, request objects, authorization URLs) never appear in
a log, an exception message or a ``repr``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from broker.clock import Clock
from broker.errors import (
    AuditError,
    AuthorizationDenied,
    AuthorizationResponseError,
    BrokerError,
    InvalidArgument,
    InvalidGrant,
    LoginCapacityExceeded,
    LoginExpired,
    LoginNotFound,
)
from broker.keys.api import Signer
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata
from broker.oauth.pkce import Pkce, new_pkce
from broker.oauth.request_object import (
    authorization_url,
    build_authorization_request,
    new_nonce,
    new_state,
    par_authorization_url,
    sign_request_object,
)
from broker.oauth.types import TokenSet
from broker.tokens.audit_events import AuditAction, AuditEvent, AuditTrail, reason_code
from broker.tokens.ports import GrantSink

REQUEST_OBJECT_PATH = "/request-objects/"
MAX_PENDING_LOGINS = 10_000
_log = logging.getLogger(__name__)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5B\x5D-\x7E]{1,64}$")  # RFC 6749 4.1.2.1 charset
_REF = re.compile(r"^[A-Za-z0-9_\-]{43}$")  # secrets.token_urlsafe(32): 256 bits
_NOT_FOUND_MESSAGE = "no such login"

LabelCheck = Callable[[str], None]
"""Called with a login's label before anything happens to it; raises (PermissionDenied) to
refuse."""


class LoginClient(Protocol):
    """What the login flow needs from :class:`broker.oauth.client.OAuthClient`."""

    async def metadata(self) -> ServerMetadata: ...

    async def exchange_code(
        self, code: str, *, code_verifier: str | None, nonce: str | None
    ) -> TokenSet: ...

    async def push_authorization_request(self, request_object: str) -> tuple[str, float]: ...

    def exchange_gate(self) -> AbstractAsyncContextManager[None]: ...


class LoginState(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True)
class LoginView:
    """What callers may know about a login. The authorization URL carries ``state`` and
    ``nonce`` (the user agent needs them), so it is kept out of ``repr``."""

    login_id: str
    label: str
    state: LoginState
    authorization_url: str | None = field(repr=False)
    expires_at: float
    grant_id: str | None = None
    error: str | None = None
    restarted: bool = False


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


@dataclass(repr=False)
class _Login:
    login_id: str
    label: str
    expires_at: float
    owner: str | None = None
    status: LoginState = LoginState.PENDING
    state_key: bytes = b""
    ref_key: bytes | None = None
    nonce: str = ""
    pkce: Pkce | None = None
    request_object: str = ""
    authorization_url: str = ""
    exchanging: bool = False
    grant_id: str | None = None
    error: str | None = None
    restarted: bool = False
    finished_at: float | None = None

    def __repr__(self) -> str:
        return f"_Login(login_id={self.login_id!r}, label={self.label!r}, status={self.status})"


class LoginService:
    """Starts logins, serves their request objects, completes them from the callback."""

    def __init__(
        self,
        client: LoginClient,
        config: ClientConfig,
        signer: Signer,
        sink: GrantSink,
        clock: Clock,
        *,
        public_base_url: str,
        login_ttl: float = 600.0,
        label_default: str = "default",
        max_pending: int = MAX_PENDING_LOGINS,
        retention: float | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        if not public_base_url.startswith(("https://", "http://")) or public_base_url.endswith("/"):
            raise InvalidArgument("public_base_url must be an absolute URL without a trailing '/'")
        if login_ttl <= 0:
            raise InvalidArgument("login_ttl must be positive")
        if max_pending < 1:
            raise InvalidArgument("max_pending must be at least 1")
        self._client = client
        self._audit = audit or AuditTrail.disabled()
        self._config = config
        self._signer = signer
        self._sink = sink
        self._clock = clock
        self._base = public_base_url
        self._ttl = login_ttl
        self._label_default = label_default
        self._max_pending = max_pending
        self._retention = login_ttl if retention is None else retention
        self._logins: dict[str, _Login] = {}
        self._by_state: dict[bytes, str] = {}
        self._by_ref: dict[bytes, str] = {}

    def __repr__(self) -> str:
        return f"LoginService(issuer={self._config.issuer!r}, logins={len(self._logins)})"

    # --- start ----------------------------------------------------------------------------

    async def start(self, *, label: str | None = None, owner: str | None = None) -> LoginView:
        """Begin an authorization code flow (RFC 6749 section 4.1.1, RFC 9101 section 5.2)
        on behalf of ``owner`` (the caller identity; ``None`` for an in-process caller)."""
        label = self._label_default if label is None else label
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise InvalidArgument("label must be 1-128 characters of [A-Za-z0-9._:@-]")
        self._prune()
        pending = sum(1 for lg in self._logins.values() if lg.status is LoginState.PENDING)
        if pending >= self._max_pending:
            raise LoginCapacityExceeded(
                f"too many pending logins (limit {self._max_pending}); retry later"
            )
        login = _Login(login_id=secrets.token_urlsafe(16), label=label, expires_at=0.0, owner=owner)
        await self._prepare(login)
        self._logins[login.login_id] = login
        return self._view(login)

    async def _prepare(self, login: _Login) -> None:
        """Make a fresh authorization request for ``login``: new state, nonce, PKCE, request
        object and request_uri. The old state and request_uri (if any) stop working."""
        metadata = await self._client.metadata()
        state = new_state()
        nonce = new_nonce()
        pkce = new_pkce() if self._config.use_pkce else None
        request = build_authorization_request(
            self._config,
            metadata,
            state=state,
            nonce=nonce,
            code_challenge=pkce.challenge if pkce else None,
            now=self._clock.now(),
            jti=secrets.token_urlsafe(16),
        )
        jws = await sign_request_object(self._signer, request.claims)
        ref_key: bytes | None = None
        now = self._clock.now()
        expires_at = now + self._ttl
        if self._config.use_par and metadata.pushed_authorization_request_endpoint:
            request_uri, expires_in = await self._client.push_authorization_request(jws)
            url = par_authorization_url(metadata, self._config.client_id, request_uri)
            # RFC 9126 section 2.2: the pushed request_uri dies after expires_in.
            expires_at = min(expires_at, now + float(expires_in))
        else:
            ref = secrets.token_urlsafe(32)
            ref_key = _digest(ref)
            url = authorization_url(
                metadata,
                self._config,
                request_uri=f"{self._base}{REQUEST_OBJECT_PATH}{ref}",
                state=state,
                nonce=nonce,
                code_challenge=pkce.challenge if pkce else None,
            )
        self._forget_lookups(login)
        login.state_key = _digest(state)
        login.ref_key = ref_key
        login.nonce = nonce
        login.pkce = pkce
        login.request_object = jws
        login.authorization_url = url
        login.expires_at = expires_at
        self._by_state[login.state_key] = login.login_id
        if ref_key is not None:
            self._by_ref[ref_key] = login.login_id

    # --- request objects ------------------------------------------------------------------

    def request_object(self, ref: str) -> str | None:
        """The compact JWS published at ``/request-objects/{ref}`` (RFC 9101 section 5.2):
        served on every fetch while the login is pending, ``None`` otherwise."""
        if not isinstance(ref, str) or not _REF.fullmatch(ref):
            return None
        login_id = self._by_ref.get(_digest(ref))
        if login_id is None:
            return None
        login = self._logins.get(login_id)
        if login is None or login.ref_key is None:
            return None
        if not hmac.compare_digest(login.ref_key, _digest(ref)):
            return None
        if login.status is not LoginState.PENDING or login.exchanging:
            return None
        if self._expired(login):
            self._expire(login)
            return None
        return login.request_object

    # --- completion -----------------------------------------------------------------------

    async def complete(
        self,
        *,
        code: str | None,
        state: str | None,
        iss: str | None,
        error: str | None = None,
        owner: str | None = None,
        authorize: LabelCheck | None = None,
    ) -> LoginView:
        """Handle the authorization response (RFC 6749 section 4.1.2, RFC 9207 section 2.4)
        and exchange the code (RFC 6749 section 4.1.3).

        With ``owner`` (a gRPC caller) only that owner's logins are found: any other state is
        :class:`LoginNotFound`, as for an unknown one. Without it (the browser callback) the
        state alone finds the login. ``authorize`` is called with the login's label before
        anything else. Every rejection before the code exchange leaves the login as it was,
        except the AS's own ``error=`` answer, which ends it.
        """
        self._prune()
        if not state:
            raise AuthorizationResponseError(
                "authorization response without state", reason="missing_state"
            )
        login = self._pending_by_state(state, owner, authorize)
        metadata = await self._client.metadata()
        # The await let other responses in: look again (consumed, restarted or expired since).
        login = self._pending_by_state(state, owner, authorize)
        if iss is not None and iss != self._config.issuer:
            raise AuthorizationResponseError(
                "authorization response iss is not the expected issuer", reason="iss_mismatch"
            )
        if iss is None and metadata.authorization_response_iss_parameter_supported:
            raise AuthorizationResponseError(
                "authorization response without iss although the issuer sends it",
                reason="iss_missing",
            )
        answer: str | AuthorizationDenied
        if error is not None:
            code_ok = isinstance(error, str) and _ERROR_CODE.fullmatch(error)
            answer = AuthorizationDenied(error if code_ok else "invalid_error_code")
        elif code:
            answer = code
        else:
            raise AuthorizationResponseError(
                "authorization response without code", reason="missing_code"
            )
        # From here on the state is consumed: a second response with it is a replay (C03).
        self._forget_lookups(login)
        login.exchanging = True
        try:
            if isinstance(answer, AuthorizationDenied):
                raise answer  # the AS ended this login
            try:
                async with self._client.exchange_gate():
                    tokens = await self._client.exchange_code(
                        answer,
                        code_verifier=login.pkce.verifier if login.pkce else None,
                        nonce=login.nonce,
                    )
            except InvalidGrant:
                if not self._config.dome_compat or login.restarted:
                    raise
                # DOME bug 1: the Verifier overwrote this code. Restart once, same login id.
                login.restarted = True
                await self._prepare(login)
                login.exchanging = False
                return self._view(login)
            grant = await self._sink.add_grant(
                tokens,
                label=login.label,
                issuer=self._config.issuer,
                client_id=self._config.client_id,
            )
        except BrokerError as exc:
            self._finish(login, LoginState.FAILED, error=exc.reason)
            await self._audit_failure(login, exc.reason, audit_down=isinstance(exc, AuditError))
            raise
        except Exception:
            self._finish(login, LoginState.FAILED, error="internal")
            await self._audit_failure(login, "internal", audit_down=False)
            raise
        self._finish(login, LoginState.COMPLETED, grant_id=grant.grant_id)
        _log.info(
            "login completed",
            extra={"grant_id": grant.grant_id, "label": login.label, "caller": login.owner},
        )
        return self._view(login)

    def _pending_by_state(
        self, state: str, owner: str | None, authorize: LabelCheck | None
    ) -> _Login:
        """The pending login ``state`` belongs to, as ``owner`` may see it; raises otherwise.
        Changes nothing but a due expiry."""
        login_id = self._by_state.get(_digest(state))
        login = self._logins.get(login_id) if login_id is not None else None
        if login is not None and not hmac.compare_digest(login.state_key, _digest(state)):
            login = None
        if owner is not None:
            login = self._visible(login, owner)
            if login is None:
                raise LoginNotFound(_NOT_FOUND_MESSAGE)
        elif login is None:
            raise AuthorizationResponseError(
                "authorization response with an unknown or consumed state", reason="unknown_state"
            )
        if authorize is not None:
            authorize(login.label)
        if login.status is LoginState.PENDING and not login.exchanging and self._expired(login):
            self._expire(login)
        if login.status is LoginState.EXPIRED:
            raise LoginExpired("the login expired before the authorization response arrived")
        if login.status is not LoginState.PENDING or login.exchanging:
            raise AuthorizationResponseError(
                "authorization response for a login that is not pending", reason="state_replayed"
            )
        return login

    # --- queries --------------------------------------------------------------------------

    def get(self, login_id: str, *, owner: str | None = None) -> LoginView:
        """The current view of a login; :class:`LoginNotFound` once forgotten or unknown, and
        for a login of another owner when ``owner`` is given (``None``: an in-process caller,
        who sees every login)."""
        self._prune()
        login = self._logins.get(login_id) if isinstance(login_id, str) else None
        if owner is not None:
            login = self._visible(login, owner)
        if login is None:
            raise LoginNotFound(_NOT_FOUND_MESSAGE)
        return self._view(login)

    @property
    def pending_count(self) -> int:
        return sum(1 for lg in self._logins.values() if lg.status is LoginState.PENDING)

    # --- internals ------------------------------------------------------------------------

    async def _audit_failure(self, login: _Login, reason: str, *, audit_down: bool) -> None:
        """``login.failed`` (best effort) for a found login whose response failed; B10: one
        event per failed exchange. Not written when the failure *is* the audit trail (it was
        just counted and logged; writing again would only double the wait). Responses with an
        unknown state are not audited: anyone can send those (the web log has them)."""
        if audit_down:
            return
        await self._audit.note(
            AuditEvent(
                AuditAction.LOGIN_FAILED, "error", label=login.label, reason=reason_code(reason)
            )
        )

    @staticmethod
    def _visible(login: _Login | None, owner: str) -> _Login | None:
        """``login`` if ``owner`` started it, else ``None`` (as if it did not exist)."""
        return login if login is not None and login.owner == owner else None

    def _expired(self, login: _Login) -> bool:
        return self._clock.now() >= login.expires_at

    def _forget_lookups(self, login: _Login) -> None:
        if login.state_key and self._by_state.get(login.state_key) == login.login_id:
            del self._by_state[login.state_key]
        if login.ref_key is not None and self._by_ref.get(login.ref_key) == login.login_id:
            del self._by_ref[login.ref_key]

    def _finish(
        self,
        login: _Login,
        status: LoginState,
        *,
        grant_id: str | None = None,
        error: str | None = None,
    ) -> None:
        if status is LoginState.EXPIRED:
            # The request object goes at once; the state stays known until the login is
            # forgotten, so that a late callback is told "expired" rather than "unknown".
            if login.ref_key is not None and self._by_ref.get(login.ref_key) == login.login_id:
                del self._by_ref[login.ref_key]
        else:
            self._forget_lookups(login)
        login.status = status
        login.exchanging = False
        login.grant_id = grant_id
        login.error = error
        login.finished_at = self._clock.now()
        # Drop every secret as soon as it is of no more use.
        login.nonce = ""
        login.pkce = None
        login.request_object = ""
        login.authorization_url = ""

    def _expire(self, login: _Login) -> None:
        self._finish(login, LoginState.EXPIRED, error="login_expired")

    def _prune(self) -> None:
        now = self._clock.now()
        for login in list(self._logins.values()):
            if login.status is LoginState.PENDING and not login.exchanging and self._expired(login):
                self._expire(login)
            if login.finished_at is not None and now - login.finished_at >= self._retention:
                self._forget_lookups(login)
                del self._logins[login.login_id]

    def _view(self, login: _Login) -> LoginView:
        state = login.status
        if state is LoginState.PENDING and not login.exchanging and self._expired(login):
            self._expire(login)
            state = login.status
        return LoginView(
            login_id=login.login_id,
            label=login.label,
            state=state,
            authorization_url=login.authorization_url if state is LoginState.PENDING else None,
            expires_at=login.expires_at,
            grant_id=login.grant_id,
            error=login.error,
            restarted=login.restarted,
        )
