"""DOME machine-to-machine access: the client credentials grant (RFC 6749 section 4.4) with a
LEARCredentialMachine presented in the client assertion (DOME-PROFILE "Machine-to-machine").

One token request: ``grant_type=client_credentials``, ``scope``, ``client_id`` (our did),
``client_assertion_type`` (jwt-bearer) and ``client_assertion`` made by the one assertion
builder (:mod:`broker.oauth.client_auth`: ``iss`` = ``sub`` = the did, ``aud`` = the issuer as
one string, fresh ``jti`` per attempt, ``iat``, ``exp``) with one more claim, ``vp_token``
(:mod:`broker.oauth.vp`): a fresh presentation of the credential per attempt, signed in the HSM.
The response is ``{access_token, token_type, expires_in}``: no refresh token, no id_token.

The Verifier answers nearly every failure with an empty 403, so before anything is sent the
credential is checked here (:func:`broker.credentials.verify.verify_credential`: type, binding to
our did, validity window, signature and certificate) and the assertion's audience form:
a failure is a :class:`broker.errors.CredentialError` naming the reason, logged at ERROR, and no
request leaves. An empty 403 after those checks passed is
:class:`broker.errors.MachineGrantRejected` (``m2m_rejected``, logged with its likely causes by
:mod:`broker.oauth.as_errors`); 401 ``invalid_client`` stays
:class:`broker.errors.ClientAuthenticationFailed`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from broker.clock import Clock
from broker.credentials.lear import LearCredentialMachine
from broker.credentials.verify import verify_credential
from broker.errors import ConfigError, CredentialError
from broker.keys.api import Signer
from broker.oauth.client_auth import assertion_audience
from broker.oauth.config import ClientConfig
from broker.oauth.metadata import ServerMetadata
from broker.oauth.token_endpoint import AssertionClaims
from broker.oauth.types import TokenSet
from broker.oauth.vp import sign_presentation, vp_token_value

_log = logging.getLogger(__name__)

VP_TOKEN_CLAIM = "vp_token"  # noqa: S105 - a claim name


class ClientCredentialsPort(Protocol):
    """What this module needs of :class:`broker.oauth.client.OAuthClient`."""

    config: ClientConfig

    async def metadata(self) -> ServerMetadata: ...

    async def client_credentials(
        self, scope: str, *, assertion_extra: AssertionClaims | None = None
    ) -> TokenSet: ...


def check_audience(audience: object, *, issuer: str) -> str:
    """The assertion's ``aud`` must be the issuer identifier as ONE string: the Verifier
    rejects an array or the token endpoint URL for this grant (with an empty 403)."""
    if not isinstance(audience, str) or audience != issuer:
        raise ConfigError(
            "the client_credentials assertion audience must be the issuer identifier as one string"
        )
    return audience


class MachineClient:
    """Obtains machine access tokens; implements
    :class:`broker.tokens.ports.MachineTokenSource`.

    ``credential`` is called for every acquisition (e.g. reading the credential file, so a
    renewed credential is used without a restart); it raises :class:`CredentialError` when
    there is none.
    """

    def __init__(
        self,
        client: ClientCredentialsPort,
        signer: Signer,
        clock: Clock,
        credential: Callable[[], LearCredentialMachine],
        *,
        ca_bundle: list[x509.Certificate] | None = None,
    ) -> None:
        self._client = client
        self._signer = signer
        self._clock = clock
        self._credential = credential
        self._ca_bundle = ca_bundle

    def __repr__(self) -> str:
        return f"MachineClient(client_id={self._client.config.client_id!r})"

    def check_locally(self, cred: LearCredentialMachine) -> None:
        """What the Verifier would refuse with an empty 403, checked here with a reason:
        type, binding to our did, validity window now, signature, certificate."""
        did = self._client.config.client_id
        verify_credential(
            cred,
            did=did,
            now=datetime.fromtimestamp(self._clock.now(), UTC),
            ca_bundle=self._ca_bundle,
        )

    async def acquire(self, *, label: str, scope: str) -> TokenSet:
        """One machine access token for grant ``label`` (for logs) with ``scope``."""
        config = self._client.config
        try:
            cred = self._credential()
            self.check_locally(cred)
        except CredentialError as exc:
            _log.error(
                "machine grant %s: the LEARCredentialMachine is refused locally (%s): %s; "
                "no token request sent, an operator has to import a valid credential",
                label,
                exc.reason,
                exc.message,
            )
            raise
        metadata = await self._client.metadata()
        audience = check_audience(assertion_audience(metadata), issuer=config.issuer)

        async def presentation(now: float) -> Mapping[str, Any]:
            vp = await sign_presentation(
                self._signer,
                holder=config.client_id,
                credential_jwt=cred.jwt,
                audience=audience,
                now=now,
            )
            return {VP_TOKEN_CLAIM: vp_token_value(vp)}

        return await self._client.client_credentials(scope, assertion_extra=presentation)
