"""Key self-test: sign a fresh random challenge as a JWS in the token, verify it independently.

The signature is made by the token (through :class:`broker.keys.api.Signer`), assembled by
:func:`broker.jose.sign_compact` and verified with jwcrypto against the public key *decoded from
the did:key* (not the key the token reports), so the test proves the three agree: the private
key in the token, its public key, and the did the Verifier will use (RFC 7515 section 5.2,
RFC 7518 section 3.4: ES256 is the raw 64-byte r||s).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

from jwcrypto.common import JWException
from jwcrypto.jwk import JWK
from jwcrypto.jws import JWS

from broker.clock import Clock
from broker.errors import SelfTestFailed
from broker.jose import b64url, b64url_decode, sign_compact
from broker.keys.api import ES256, KeyInfo, Signer
from broker.keys.didkey import jwk_from_did


@dataclass(frozen=True)
class SelfTestReport:
    did: str
    kid: str
    mechanism: str
    challenge: str  # base64url of the 32 random bytes that were signed
    jws: str  # the compact JWS made in the token (a signature over a random value: not secret)


def run_selftest(signer: Signer, info: KeyInfo, *, clock: Clock) -> SelfTestReport:
    """Sign a fresh challenge with ``signer`` and verify it with ``info.did``'s public key.

    Raises :class:`broker.errors.SelfTestFailed` naming the first check that failed.
    """
    did = info.did
    if signer.alg != ES256:
        raise SelfTestFailed(f"signer algorithm is {signer.alg}, expected {ES256}")
    if signer.kid != did:
        raise SelfTestFailed("signer kid differs from the key's did:key")
    challenge = b64url(os.urandom(32))
    claims = {
        "iss": did,
        "challenge": challenge,
        "iat": int(clock.now()),
        "jti": str(uuid.uuid4()),
    }
    token = sign_compact(signer, claims, typ="JWT")
    signature = b64url_decode(token.rsplit(".", 1)[1])
    if len(signature) != 64:
        raise SelfTestFailed(
            f"token returned a {len(signature)}-byte signature; ES256 needs 64 bytes (r||s)"
        )
    verifier = JWS()
    try:
        verifier.deserialize(token)
        verifier.verify(JWK(**jwk_from_did(did)), alg=ES256)
    except JWException as exc:
        raise SelfTestFailed(
            "the token's signature does not verify with the did:key public key"
        ) from exc
    header = verifier.jose_header
    if not isinstance(header, dict) or header.get("kid") != did:
        raise SelfTestFailed("JWS header kid is not the bare did")
    if json.loads(verifier.payload) != claims:
        raise SelfTestFailed("verified payload differs from the signed challenge")
    return SelfTestReport(
        did=did, kid=signer.kid, mechanism=signer.mechanism, challenge=challenge, jws=token
    )
