"""The gRPC servicer: a thin adapter over the domain services.

Each RPC: caller identity (mTLS peer) -> policy (method) -> validation -> policy (grant) ->
domain call under a deadline -> status mapping (:func:`broker.server.errors.to_rich_status`:
code, message and the ``google.rpc.ErrorInfo`` trailer) -> proto. No protobuf type goes below
``broker/server``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

import grpc

from broker.audit.events import AuditAction, AuditEvent, identifier, reason_code
from broker.audit.trail import AuditTrail
from broker.errors import InvalidArgument, NotFound, PermissionDenied
from broker.server import convert, paging, validation
from broker.server.errors import to_rich_status
from broker.server.gen.broker.v1 import broker_pb2 as pb
from broker.server.identity import PEM_KEY, CallerIdentity, identity_from_auth_context
from broker.server.policy import Policy, Rule
from broker.server.ports import LoginService, TokenService
from broker.tokens.model import Grant, GrantSummary

log = logging.getLogger("broker.server")

T = TypeVar("T")
Context = Any  # grpc.aio.ServicerContext (grpc ships no type information)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["TokenBroker"].full_name
DEFAULT_MAX_DEADLINE = 30.0
_IDENTITY_CACHE_SIZE = 1024


class PolicySource(Protocol):
    @property
    def current(self) -> Policy: ...


class TokenBrokerServicer:
    """Implements ``broker.v1.TokenBroker``.

    ``max_deadline`` bounds every unary domain call, also when the caller set no deadline
    (TEST-CATALOGUE F05); a shorter caller deadline wins. ``cn_identities`` lets a certificate
    without a URI SAN name its caller ``cn:<CN>`` (:mod:`broker.server.identity`).
    """

    def __init__(
        self,
        *,
        broker: TokenService,
        logins: LoginService,
        policy: PolicySource,
        max_deadline: float = DEFAULT_MAX_DEADLINE,
        audit: AuditTrail | None = None,
        cn_identities: bool = False,
    ) -> None:
        self._broker = broker
        self._cn_identities = cn_identities
        self._audit = audit or AuditTrail.disabled()
        self._logins = logins
        self._policy = policy
        self._max_deadline = max_deadline
        # Identity by the exact certificate it is derived from (a caller reuses one certificate
        # per channel); failures are not memoised here. Bounded: cleared when full.
        self._identities: dict[tuple[bytes, ...], CallerIdentity] = {}

    # --- plumbing ---------------------------------------------------------------------------

    def _identity(self, auth: Any) -> CallerIdentity:
        key = tuple(auth.get(PEM_KEY) or ())
        caller = self._identities.get(key)
        if caller is None:
            caller = identity_from_auth_context(auth, cn_identities=self._cn_identities)
            if len(self._identities) >= _IDENTITY_CACHE_SIZE:
                self._identities.clear()
            self._identities[key] = caller
        return caller

    def _authorize(self, caller: CallerIdentity, method: str) -> Rule:
        return self._policy.current.authorize_method(caller, method)

    async def _audit_denied(
        self, exc: Exception, method: str, caller: CallerIdentity | None
    ) -> None:
        """E05: ``caller.denied`` (identity + method + reason, never the grant or label asked
        for: no inventory). Best effort: the denial stands whatever the audit trail does."""
        if not isinstance(exc, PermissionDenied):
            return
        await self._audit.note(
            AuditEvent(
                AuditAction.CALLER_DENIED,
                "error",
                caller=identifier(caller.name) if caller is not None else None,
                method=method,
                reason=reason_code(exc.reason),
            )
        )

    async def _authorize_grant(
        self, caller: CallerIdentity, method: str, rule: Rule, grant_id: str
    ) -> None:
        if rule.allows_grant(grant_id, None):
            return
        label: str | None = None
        if rule.labels:
            try:
                label = (await self._broker.get_grant(grant_id)).label
            except NotFound:
                label = None  # deny without revealing whether the grant exists
        Policy.authorize_grant(caller, method, rule, grant_id, label)

    def _timeout(self, context: Context) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self._max_deadline
        return min(float(remaining), self._max_deadline)

    async def _unary(
        self,
        context: Context,
        method: str,
        handler: Callable[[CallerIdentity, Rule], Awaitable[T]],
        request: object = None,
    ) -> T:
        caller: CallerIdentity | None = None
        try:
            caller = self._identity(context.auth_context())
            rule = self._authorize(caller, method)
            # asyncio.timeout, not wait_for: no extra task per call on the hot path.
            async with asyncio.timeout(self._timeout(context)):
                return await handler(caller, rule)
        except Exception as exc:
            failure = exc
        await self._abort(context, failure, method, request, caller)

    async def _stream(
        self,
        context: Context,
        method: str,
        handler: Callable[[CallerIdentity, Rule], AsyncIterator[T]],
        request: object = None,
    ) -> AsyncIterator[T]:
        """A server-streaming RPC: as :meth:`_unary`, but the stream has no overall deadline
        (``handler`` bounds its own set-up)."""
        caller: CallerIdentity | None = None
        try:
            caller = self._identity(context.auth_context())
            rule = self._authorize(caller, method)
            async for item in handler(caller, rule):
                yield item
            return
        except Exception as exc:
            failure = exc
        await self._abort(context, failure, method, request, caller)

    async def _abort(
        self,
        context: Context,
        exc: Exception,
        method: str,
        request: object,
        caller: CallerIdentity | None,
    ) -> NoReturn:
        """The one failure path of every RPC: status mapping (an INTERNAL one is logged with
        its traceback), the denial audit, then abort with the ``ErrorInfo`` trailer."""
        code, message, trailers = to_rich_status(exc, ids=_request_ids(request))
        if code is grpc.StatusCode.INTERNAL:
            log.error("%s failed: %s", method, type(exc).__name__, exc_info=exc)
        await self._audit_denied(exc, method, caller)
        await context.abort(code, message, trailing_metadata=trailers)
        raise AssertionError("context.abort returned")  # pragma: no cover

    # --- logins -----------------------------------------------------------------------------

    async def StartAuthorization(
        self, request: pb.StartAuthorizationRequest, context: Context
    ) -> pb.StartAuthorizationResponse:
        async def run(caller: CallerIdentity, rule: Rule) -> pb.StartAuthorizationResponse:
            label = validation.label(request.label)
            Policy.authorize_label(caller, "StartAuthorization", rule, label)
            view = await self._logins.start(label=label, owner=caller.name)
            return pb.StartAuthorizationResponse(
                authorization_url=view.authorization_url or "",
                login_id=view.login_id,
                expires_at=convert.timestamp(view.expires_at),
            )

        return await self._unary(context, "StartAuthorization", run, request)

    async def CompleteAuthorization(
        self, request: pb.CompleteAuthorizationRequest, context: Context
    ) -> pb.CompleteAuthorizationResponse:
        async def run(caller: CallerIdentity, rule: Rule) -> pb.CompleteAuthorizationResponse:
            code, state, iss, error = validation.authorization_response(
                code=request.code, state=request.state, iss=request.iss, error=request.error
            )
            # Only the caller's own logins, of labels it may hold; proto3 has no absent string:
            # "" means not sent.
            view = await self._logins.complete(
                code=code or None,
                state=state,
                iss=iss or None,
                error=error,
                owner=caller.name,
                authorize=functools.partial(
                    Policy.authorize_label, caller, "CompleteAuthorization", rule
                ),
            )
            return pb.CompleteAuthorizationResponse(login=convert.login(view))

        return await self._unary(context, "CompleteAuthorization", run, request)

    async def GetLogin(self, request: pb.GetLoginRequest, context: Context) -> pb.GetLoginResponse:
        async def run(caller: CallerIdentity, rule: Rule) -> pb.GetLoginResponse:
            view = await self._logins.get(validation.login_id(request.login_id), owner=caller.name)
            Policy.authorize_label(caller, "GetLogin", rule, view.label)
            return pb.GetLoginResponse(login=convert.login(view))

        return await self._unary(context, "GetLogin", run, request)

    # --- tokens and grants ------------------------------------------------------------------

    async def GetAccessToken(
        self, request: pb.GetAccessTokenRequest, context: Context
    ) -> pb.GetAccessTokenResponse:
        async def run(caller: CallerIdentity, rule: Rule) -> pb.GetAccessTokenResponse:
            grant_id = validation.grant_id(request.grant_id)
            min_ttl = validation.min_ttl(request.min_ttl.seconds, request.min_ttl.nanos)
            await self._authorize_grant(caller, "GetAccessToken", rule, grant_id)
            tok = await self._broker.get_access_token(grant_id, min_ttl=min_ttl)
            return pb.GetAccessTokenResponse(token=convert.access_token(tok))

        return await self._unary(context, "GetAccessToken", run, request)

    async def WatchAccessToken(
        self, request: pb.WatchAccessTokenRequest, context: Context
    ) -> AsyncIterator[pb.WatchAccessTokenResponse]:
        async def run(
            caller: CallerIdentity, rule: Rule
        ) -> AsyncIterator[pb.WatchAccessTokenResponse]:
            grant_id = validation.grant_id(request.grant_id)
            async with asyncio.timeout(self._timeout(context)):
                await self._authorize_grant(caller, "WatchAccessToken", rule, grant_id)
            async for tok in self._broker.watch(grant_id):
                yield pb.WatchAccessTokenResponse(token=convert.access_token(tok))

        async for response in self._stream(context, "WatchAccessToken", run, request):
            yield response

    async def GetGrant(self, request: pb.GetGrantRequest, context: Context) -> pb.GetGrantResponse:
        async def run(caller: CallerIdentity, rule: Rule) -> pb.GetGrantResponse:
            grant_id = validation.grant_id(request.grant_id)
            await self._authorize_grant(caller, "GetGrant", rule, grant_id)
            return pb.GetGrantResponse(grant=convert.grant(await self._broker.get_grant(grant_id)))

        return await self._unary(context, "GetGrant", run, request)

    async def ListGrants(
        self, request: pb.ListGrantsRequest, context: Context
    ) -> pb.ListGrantsResponse:
        async def run(_caller: CallerIdentity, rule: Rule) -> pb.ListGrantsResponse:
            label = validation.label_filter(request.label)
            size = paging.page_size(request.page_size)
            after = paging.decode_token(request.page_token, label)
            # Paged here, over the whole (policy-filtered) list: the stores have no keyset
            # query, and the policy filter would have to run inside one.
            grants = await self._broker.list_grants(label)
            visible = (g for g in grants if rule.allows_grant(g.grant_id, g.label))
            page = paging.cut_page(visible, _grant_key, after=after, size=size)
            return pb.ListGrantsResponse(
                grants=[convert.grant(g) for g in page.items],
                next_page_token=(
                    paging.encode_token(label, page.next_after) if page.next_after else ""
                ),
            )

        return await self._unary(context, "ListGrants", run, request)

    async def RevokeGrant(
        self, request: pb.RevokeGrantRequest, context: Context
    ) -> pb.RevokeGrantResponse:
        async def run(caller: CallerIdentity, rule: Rule) -> pb.RevokeGrantResponse:
            grant_id = validation.grant_id(request.grant_id)
            await self._authorize_grant(caller, "RevokeGrant", rule, grant_id)
            await self._broker.revoke_grant(grant_id)
            return pb.RevokeGrantResponse()

        return await self._unary(context, "RevokeGrant", run, request)


def _grant_key(grant: Grant | GrantSummary) -> str:
    return grant.grant_id


def _request_ids(request: object) -> dict[str, str]:
    """The request's grant and login ids for the ErrorInfo metadata, only when well formed (a
    malformed one is not echoed back)."""
    ids: dict[str, str] = {}
    for field, key, check in (
        ("grant_id", "grantId", validation.grant_id),
        ("login_id", "loginId", validation.login_id),
    ):
        value = getattr(request, field, "")
        if not isinstance(value, str) or not value:
            continue
        try:
            ids[key] = check(value)
        except InvalidArgument:
            continue
    return ids
