"""The login service: starts logins, serves their request objects, completes them from the
callback, restarts them after a curable exchange failure (see :mod:`broker.login`)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import replace

from broker.audit.events import AuditAction, AuditEvent, reason_code
from broker.audit.trail import AuditTrail
from broker.clock import Clock
from broker.errors import (
    AuditError,
    AuthorizationDenied,
    AuthorizationResponseError,
    BrokerError,
    InvalidArgument,
    LoginCapacityExceeded,
    LoginExpired,
    LoginNotFound,
)
from broker.keys.api import Signer
from broker.login.ports import GrantSink, LabelCheck, LoginClient
from broker.login.restarts import MAX_RESTARTS, restart_reason
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
MAX_PENDING_LOGINS = 10_000
_log = logging.getLogger(__name__)
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$")
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5B\x5D-\x7E]{1,64}$")  # RFC 6749 4.1.2.1 charset
_REF = re.compile(r"^[A-Za-z0-9_\-]{43}$")  # secrets.token_urlsafe(32): 256 bits
_NOT_FOUND_MESSAGE = "no such login"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


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
        store: LoginStore | None = None,
        max_restarts: int = MAX_RESTARTS,
    ) -> None:
        if not public_base_url.startswith(("https://", "http://")) or public_base_url.endswith("/"):
            raise InvalidArgument("public_base_url must be an absolute URL without a trailing '/'")
        if login_ttl <= 0:
            raise InvalidArgument("login_ttl must be positive")
        if max_pending < 1:
            raise InvalidArgument("max_pending must be at least 1")
        if max_restarts < 0:
            raise InvalidArgument("max_restarts must not be negative")
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
        self._max_restarts = max_restarts
        self._retention = login_ttl if retention is None else retention
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
            ref_key = _digest(ref)
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
            state_key=_digest(state),
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
        key = _digest(ref)
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
        await self._prune()
        if not state:
            raise AuthorizationResponseError(
                "authorization response without state", reason="missing_state"
            )
        login = await self._pending_by_state(state, owner, authorize)
        metadata = await self._client.metadata()
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
        # Claim the login in the store: from here on the state is consumed, and of two
        # responses racing (on this replica or another) only one gets past this line (C03).
        claimed = await self._store.claim_login(login.login_id, _digest(state), self._clock.now())
        if claimed is None:
            # Consumed, restarted or expired since the lookup: say which, as for a late one.
            await self._pending_by_state(state, owner, authorize)
            raise AuthorizationResponseError(
                "authorization response with an unknown or consumed state", reason="unknown_state"
            )
        return await self._exchange(claimed, answer)

    async def _exchange(self, login: LoginRecord, answer: str | AuthorizationDenied) -> LoginView:
        """Exchange the code of a claimed login; finish or restart it."""
        secrets_ = login.secrets
        try:
            if isinstance(answer, AuthorizationDenied):
                raise answer  # the AS ended this login
            if secrets_ is None:
                raise AuthorizationResponseError(
                    "the login has no request to complete", reason="state_replayed"
                )
            try:
                async with self._client.exchange_gate():
                    tokens = await self._client.exchange_code(
                        answer, code_verifier=secrets_.code_verifier, nonce=secrets_.nonce
                    )
            except BrokerError as exc:
                restart = restart_reason(
                    exc,
                    restarts=login.restarts,
                    max_restarts=self._max_restarts,
                    dome_compat=self._config.dome_compat,
                )
                if restart is None:
                    raise
                return await self._restart(login, restart, exc)
            grant = await self._sink.add_grant(
                tokens,
                label=login.label,
                issuer=self._config.issuer,
                client_id=self._config.client_id,
            )
        except BrokerError as exc:
            failed = await self._finish(login, LoginStatus.FAILED, error=exc.reason)
            await self._audit_failure(failed, exc.reason, audit_down=isinstance(exc, AuditError))
            raise
        except Exception:
            failed = await self._finish(login, LoginStatus.FAILED, error="internal")
            await self._audit_failure(failed, "internal", audit_down=False)
            raise
        done = await self._finish(login, LoginStatus.COMPLETED, grant_id=grant.grant_id)
        _log.info(
            "login completed",
            extra={"grant_id": grant.grant_id, "label": login.label, "caller": login.owner},
        )
        return self._view(done)

    async def _restart(self, login: LoginRecord, reason: str, cause: BrokerError) -> LoginView:
        """A new authorization request under the same login id, stored back as pending."""
        renewed = await self._prepare(replace(login, restarts=login.restarts + 1))
        if not await self._store.restart_login(renewed):
            raise cause  # someone ended it meanwhile (pruned as interrupted): report the cause
        _log.warning(
            "login restarted after a failed code exchange",
            extra={"label": login.label, "reason": reason, "restarts": renewed.restarts},
        )
        return replace(
            self._view(replace(renewed, status=LoginStatus.PENDING)), restart_reason=reason
        )

    async def _pending_by_state(
        self, state: str, owner: str | None, authorize: LabelCheck | None
    ) -> LoginRecord:
        """The pending login ``state`` belongs to, as ``owner`` may see it; raises otherwise.
        Changes nothing but a due expiry."""
        key = _digest(state)
        login = await self._store.login_by_state(key)
        if login is not None and (
            login.state_key is None or not hmac.compare_digest(login.state_key, key)
        ):
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
        if login.status is LoginStatus.PENDING and self._expired(login):
            login = await self._expire(login)
        if login.status is LoginStatus.EXPIRED:
            raise LoginExpired("the login expired before the authorization response arrived")
        if login.status is not LoginStatus.PENDING:
            raise AuthorizationResponseError(
                "authorization response for a login that is not pending", reason="state_replayed"
            )
        return login

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
            raise LoginNotFound(_NOT_FOUND_MESSAGE)
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
