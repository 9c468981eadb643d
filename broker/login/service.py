"""The login service: starts logins, serves their request objects, answers queries and ends
them (see :mod:`broker.login`). Completing a login from the callback, and restarting it after a
curable exchange failure, is the mixed-in :class:`broker.login.completion.LoginCompletion`."""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import replace

from broker.audit.events import AuditAction, AuditEvent, reason_code
from broker.audit.trail import AuditTrail
from broker.clock import Clock
from broker.errors import (
    InvalidArgument,
    LoginCapacityExceeded,
    LoginNotFound,
)
from broker.keys.api import Signer
from broker.login.completion import NOT_FOUND_MESSAGE, LoginCompletion, digest
from broker.login.ports import GrantSink, LoginClient
from broker.login.settings import LoginSettings
from broker.login.views import LoginView, view_of
from broker.oauth.config import ClientConfig
from broker.oauth.pkce import new_pkce
from broker.oauth.request_object import (
    authorization_url,
    build_authorization_request,
    new_nonce,
    new_state,
    par_authorization_url,
    sign_request_object,
)
from broker.tokens.stores.logins import (
    LoginRecord,
    LoginSecrets,
    LoginStatus,
    LoginStore,
    MemoryLoginStore,
)

REQUEST_OBJECT_PATH = "/request-objects/"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
_REF = re.compile(r"^[A-Za-z0-9_\-]{43}$")  # secrets.token_urlsafe(32): 256 bits


class LoginService(LoginCompletion):
    """Starts logins, serves their request objects, completes them from the callback."""

    def __init__(
        self,
        client: LoginClient,
        config: ClientConfig,
        signer: Signer,
        sink: GrantSink,
        clock: Clock,
        *,
        settings: LoginSettings,
        audit: AuditTrail | None = None,
        store: LoginStore | None = None,
    ) -> None:
        self._client = client
        self._audit = audit or AuditTrail.disabled()
        self._config = config
        self._signer = signer
        self._sink = sink
        self._clock = clock
        self._base = settings.public_base_url
        self._ttl = settings.login_ttl
        self._label_default = settings.label_default
        self._max_pending = settings.max_pending
        self._max_restarts = settings.max_restarts
        self._retention = settings.kept_for
        self._store: LoginStore = store if store is not None else MemoryLoginStore()

    def __repr__(self) -> str:
        return f"LoginService(issuer={self._config.issuer!r}, store={type(self._store).__name__})"

    # --- start ----------------------------------------------------------------------------

    async def start(self, *, label: str | None = None, owner: str | None = None) -> LoginView:
        """Begin an authorization code flow (RFC 6749 section 4.1.1, RFC 9101 section 5.2)
        on behalf of ``owner`` (the caller identity; ``None`` for an in-process caller)."""
        label = self._label_default if label is None else label
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise InvalidArgument("label must be 1-128 characters of [A-Za-z0-9._:@-]")
        await self._prune()
        if await self._store.count_pending_logins(self._clock.now()) >= self._max_pending:
            raise LoginCapacityExceeded(
                f"too many pending logins (limit {self._max_pending}); retry later"
            )
        now = self._clock.now()
        fresh = LoginRecord(
            login_id=secrets.token_urlsafe(16),
            label=label,
            owner=owner,
            status=LoginStatus.PENDING,
            state_key=None,
            ref_key=None,
            secrets=None,
            expires_at=now,
            created_at=now,
        )
        record = await self._prepare(fresh)
        await self._store.add_login(record)
        return self._view(record)

    async def _prepare(self, login: LoginRecord) -> LoginRecord:
        """``login`` with a fresh authorization request: new state, nonce, PKCE, request
        object and request_uri (not stored yet)."""
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
            ref_key = digest(ref)
            url = authorization_url(
                metadata,
                self._config,
                request_uri=f"{self._base}{REQUEST_OBJECT_PATH}{ref}",
                state=state,
                nonce=nonce,
                code_challenge=pkce.challenge if pkce else None,
            )
        return replace(
            login,
            state_key=digest(state),
            ref_key=ref_key,
            secrets=LoginSecrets(
                nonce=nonce,
                code_verifier=pkce.verifier if pkce else None,
                request_object=jws,
                authorization_url=url,
            ),
            expires_at=expires_at,
        )

    # --- request objects ------------------------------------------------------------------

    async def request_object(self, ref: str) -> str | None:
        """The compact JWS published at ``/request-objects/{ref}`` (RFC 9101 section 5.2):
        served on every fetch while the login is pending, ``None`` otherwise."""
        if not isinstance(ref, str) or not _REF.fullmatch(ref):
            return None
        key = digest(ref)
        login = await self._store.login_by_ref(key)
        if login is None or login.ref_key is None or login.secrets is None:
            return None
        if not hmac.compare_digest(login.ref_key, key):
            return None
        if login.status is not LoginStatus.PENDING:
            return None
        if self._expired(login):
            await self._expire(login)
            return None
        return login.secrets.request_object

    # --- queries --------------------------------------------------------------------------

    async def get(self, login_id: str, *, owner: str | None = None) -> LoginView:
        """The current view of a login; :class:`LoginNotFound` once forgotten or unknown, and
        for a login of another owner when ``owner`` is given (``None``: an in-process caller,
        who sees every login)."""
        await self._prune()
        login = await self._store.login_by_id(login_id) if isinstance(login_id, str) else None
        if owner is not None:
            login = self._visible(login, owner)
        if login is None:
            raise LoginNotFound(NOT_FOUND_MESSAGE)
        if login.status is LoginStatus.PENDING and self._expired(login):
            login = await self._expire(login)
        return self._view(login)

    async def abandon(self, login_id: str) -> LoginView | None:
        """End a pending login as FAILED ``login_abandoned`` (the user agent left it); ``None``
        for an unknown login. A login that is no longer pending is returned unchanged."""
        login = await self._store.login_by_id(login_id) if isinstance(login_id, str) else None
        if login is None:
            return None
        if login.status is LoginStatus.PENDING and not self._expired(login):
            now = self._clock.now()
            if await self._store.finish_login(
                login.login_id,
                LoginStatus.FAILED,
                now=now,
                error="login_abandoned",
                expected=LoginStatus.PENDING,
            ):
                await self._audit_failure(login, "login_abandoned", audit_down=False)
            login = await self._store.login_by_id(login_id) or login
        elif login.status is LoginStatus.PENDING:
            login = await self._expire(login)
        return self._view(login)

    async def pending_count(self) -> int:
        return await self._store.count_pending_logins(self._clock.now())

    # --- internals ------------------------------------------------------------------------

    async def _audit_failure(self, login: LoginRecord, reason: str, *, audit_down: bool) -> None:
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
    def _visible(login: LoginRecord | None, owner: str) -> LoginRecord | None:
        """``login`` if ``owner`` started it, else ``None`` (as if it did not exist)."""
        return login if login is not None and login.owner == owner else None

    def _expired(self, login: LoginRecord) -> bool:
        return self._clock.now() >= login.expires_at

    async def _finish(
        self,
        login: LoginRecord,
        status: LoginStatus,
        *,
        grant_id: str | None = None,
        error: str | None = None,
    ) -> LoginRecord:
        """End a claimed login. Every secret goes at once; the state key stays only for an
        expired login, so that a late callback is told "expired" rather than "unknown"."""
        now = self._clock.now()
        await self._store.finish_login(
            login.login_id, status, now=now, grant_id=grant_id, error=error, expected=login.status
        )
        return replace(
            login,
            status=status,
            state_key=login.state_key if status is LoginStatus.EXPIRED else None,
            ref_key=None,
            secrets=None,
            grant_id=grant_id,
            error=error,
            finished_at=now,
        )

    async def _expire(self, login: LoginRecord) -> LoginRecord:
        return await self._finish(login, LoginStatus.EXPIRED, error="login_expired")

    async def _prune(self) -> None:
        await self._store.prune_logins(
            self._clock.now(), retention=self._retention, exchange_timeout=self._ttl
        )

    @staticmethod
    def _view(login: LoginRecord) -> LoginView:
        return view_of(login)
