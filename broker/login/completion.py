"""Completing a login: the authorization response and the code exchange.

:class:`LoginCompletion` is the callback half of :class:`broker.login.service.LoginService`
(mixed into it): it finds the pending login by its ``state`` (as its owner may see it), checks
the response (``iss``, RFC 9207; ``code`` or the AS's ``error=``), claims the login in the store
so that of two racing responses only one is exchanged, exchanges the code inside the client's
exchange gate, hands the grant to the sink, and ends the login, or restarts it when
:func:`broker.login.restarts.restart_reason` says a new authorization can cure the failure.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from broker.errors import (
    AuditError,
    AuthorizationDenied,
    AuthorizationResponseError,
    BrokerError,
    LoginExpired,
    LoginNotFound,
)
from broker.login.ports import GrantSink, LabelCheck, LoginClient
from broker.login.restarts import restart_reason
from broker.login.views import LoginView
from broker.tokens.stores.logins import LoginRecord, LoginStatus, LoginStore

if TYPE_CHECKING:
    from broker.clock import Clock
    from broker.oauth.config import ClientConfig

# The service's logger: "login completed" and the restart warning keep their logger name.
_log = logging.getLogger("broker.login.service")
_ERROR_CODE = re.compile(r"^[\x20-\x21\x23-\x5B\x5D-\x7E]{1,64}$")  # RFC 6749 4.1.2.1 charset
NOT_FOUND_MESSAGE = "no such login"


def digest(value: str) -> bytes:
    """The lookup key of a ``state`` or a request object reference (SHA-256)."""
    return hashlib.sha256(value.encode("utf-8")).digest()


class LoginCompletion:
    """The authorization response of a pending login; mixed into the login service."""

    if TYPE_CHECKING:
        _client: LoginClient
        _config: ClientConfig
        _sink: GrantSink
        _clock: Clock
        _store: LoginStore
        _max_restarts: int

        async def _prune(self) -> None: ...
        async def _prepare(self, login: LoginRecord) -> LoginRecord: ...
        async def _finish(
            self,
            login: LoginRecord,
            status: LoginStatus,
            *,
            grant_id: str | None = None,
            error: str | None = None,
        ) -> LoginRecord: ...
        async def _expire(self, login: LoginRecord) -> LoginRecord: ...
        def _expired(self, login: LoginRecord) -> bool: ...
        @staticmethod
        def _visible(login: LoginRecord | None, owner: str) -> LoginRecord | None: ...
        @staticmethod
        def _view(login: LoginRecord) -> LoginView: ...
        async def _audit_failure(
            self, login: LoginRecord, reason: str, *, audit_down: bool
        ) -> None: ...

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
        claimed = await self._store.claim_login(login.login_id, digest(state), self._clock.now())
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
        key = digest(state)
        login = await self._store.login_by_state(key)
        if login is not None and (
            login.state_key is None or not hmac.compare_digest(login.state_key, key)
        ):
            login = None
        if owner is not None:
            login = self._visible(login, owner)
            if login is None:
                raise LoginNotFound(NOT_FOUND_MESSAGE)
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
