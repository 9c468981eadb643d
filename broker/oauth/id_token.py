"""ID token validation (OpenID Connect Core 1.0 section 3.1.3.7; refresh: section 12.2).

The algorithm is fixed by configuration (ES256; RFC 8725 section 3.1), never taken from the
header; the signature must be exactly 64 bytes r||s with 0 < r, s < n (RFC 7518 section 3.4).
The token's size is checked before it is split; header and claims come from the strict parse
(:mod:`broker.strict_json`) of the very segments the signature covers. ``typ`` must be absent or
``JWT`` (RFC 8725 sections 3.11-3.12: an access token, DPoP proof or request object is not an
id_token).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwcrypto import jwk
from opentelemetry import trace

from broker import strict_json
from broker.clock import Clock
from broker.errors import TokenValidationError
from broker.jose import b64url_decode_strict, decode_json_segment
from broker.oauth.metadata import JwksCache

log = logging.getLogger(__name__)

ALLOWED_ALGS = frozenset({"ES256"})
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
DEFAULT_MAX_IAT_AGE = 3600.0
VC_JSON_ERROR_CLAIM = "broker_vc_json_error"
# RFC 7515 section 4.1.9: media types compare case-insensitively, "application/" may be omitted.
ID_TOKEN_TYPES = frozenset({"jwt", "application/jwt"})


def _fail(reason: str, message: str) -> TokenValidationError:
    return TokenValidationError(message, reason=reason)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def verify_es256(public_key: ec.EllipticCurvePublicKey, signing_input: bytes, sig: bytes) -> None:
    """Strict ES256 verification (RFC 7518 section 3.4): 64 bytes, 0 < r, s < n."""
    if len(sig) != 64:
        raise _fail("bad_signature", "ES256 signature must be exactly 64 bytes")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
        raise _fail("bad_signature", "ES256 signature r or s out of range")
    try:
        public_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise _fail("bad_signature", "id_token signature does not verify") from None


@functools.lru_cache(maxsize=16)
def _op_key(public_params: tuple[tuple[str, str], ...]) -> object:
    """The cryptography verification key of a JWK given by its public string members.

    A pure memo (the same members always give the same key): importing a JWK and building its
    key costs more than the ES256 verification itself. Errors are not cached (lru_cache).
    """
    key: object = jwk.JWK(**dict(public_params)).get_op_key("verify")
    return key


def _verification_key(key: jwk.JWK) -> object:
    params = tuple(sorted(key.items()))
    if all(isinstance(v, str) for _, v in params):
        return _op_key(params)
    return key.get_op_key("verify")  # unusual members: no memo


def _at_hash(access_token: str) -> str:
    """OIDC Core 3.1.3.6 for ES256: left half of SHA-256, base64url."""
    digest = hashlib.sha256(access_token.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


def _parse_vc_json(claims: dict[str, Any]) -> None:
    """DOME puts the credential in ``vc_json`` as a string: expose it as ``claims["vc"]``.
    A malformed value never fails the login; it is recorded in ``broker_vc_json_error``."""
    raw = claims.get("vc_json")
    if raw is None:
        return
    if isinstance(raw, dict):
        claims.setdefault("vc", raw)
        return
    if not isinstance(raw, str):
        claims[VC_JSON_ERROR_CLAIM] = "not_a_string"
    else:
        try:
            # The id_token's own limits; "surrogatepass" so that a lone surrogate reaches the
            # loader (and is refused there) instead of raising here.
            parsed = strict_json.loads(raw.encode("utf-8", "surrogatepass"), strict_json.JWT_LIMITS)
        except ValueError:
            claims[VC_JSON_ERROR_CLAIM] = "not_json"
            parsed = None
        if isinstance(parsed, dict):
            claims.setdefault("vc", parsed)
            return
        if parsed is not None:
            claims[VC_JSON_ERROR_CLAIM] = "not_an_object"
    log.warning("id_token vc_json is malformed (%s); login continues", claims[VC_JSON_ERROR_CLAIM])


async def validate_id_token(
    token: str,
    *,
    jwks: JwksCache,
    issuer: str,
    client_id: str,
    clock: Clock,
    skew: float,
    nonce: str | None,
    expected_subject: str | None = None,
    access_token: str | None = None,
    max_iat_age: float = DEFAULT_MAX_IAT_AGE,
    max_bytes: int = strict_json.JWT_MAX_BYTES,
) -> dict[str, Any]:
    """Validate an id_token from the token endpoint and return its claims.

    OIDC Core 3.1.3.7: alg ES256 only (6-8), signature (6), ``iss`` exact (2), ``aud`` holds
    ``client_id`` and no other audience (3-4), ``azp`` = client_id when present (5), ``exp``
    and ``iat`` present and within ``skew`` (9-10), ``nonce`` equal when one was sent (11),
    ``sub`` present and, on refresh (12.2), equal to ``expected_subject``; ``at_hash`` checked
    when present and ``access_token`` is given (3.1.3.8). A token over ``max_bytes`` is refused
    before it is split or decoded. Raises :class:`TokenValidationError` with a stable ``reason``.
    """
    try:
        return await _validate(
            token,
            jwks=jwks,
            issuer=issuer,
            client_id=client_id,
            clock=clock,
            skew=skew,
            nonce=nonce,
            expected_subject=expected_subject,
            access_token=access_token,
            max_iat_age=max_iat_age,
            max_bytes=max_bytes,
        )
    except TokenValidationError as exc:
        # Recorded on the caller's span (oauth.token_request's parent); never the token itself.
        trace.get_current_span().add_event("oauth.id_token_rejected", {"error.type": exc.reason})
        raise


async def _validate(
    token: str,
    *,
    jwks: JwksCache,
    issuer: str,
    client_id: str,
    clock: Clock,
    skew: float,
    nonce: str | None,
    expected_subject: str | None,
    access_token: str | None,
    max_iat_age: float,
    max_bytes: int,
) -> dict[str, Any]:
    if not isinstance(token, str):
        raise _fail("malformed", "id_token is not a string")
    if len(token) > max_bytes:
        raise _fail("too_large", f"id_token exceeds the {max_bytes}-byte limit")
    parts = token.split(".")
    if len(parts) != 3:
        raise _fail("malformed", "id_token is not a compact JWS")
    limits = strict_json.JsonLimits(max_bytes=max_bytes)
    try:
        header = decode_json_segment(parts[0], limits)
    except ValueError as exc:
        raise _fail("malformed", f"id_token header is not strict base64url JSON ({exc})") from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise _fail("alg_not_allowed", "id_token alg is not in the ES256 allow-list")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower() not in ID_TOKEN_TYPES):
        raise _fail("typ_not_allowed", "id_token typ is neither absent nor JWT")
    try:
        claims = decode_json_segment(parts[1], limits)
        signature = b64url_decode_strict(parts[2])
    except ValueError as exc:
        raise _fail("malformed", f"id_token payload or signature is malformed ({exc})") from exc
    if "crit" in header:
        raise _fail("malformed", "id_token has critical header parameters we do not understand")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _fail("malformed", "id_token kid is not a string")
    key = await jwks.key_for(kid)
    public_key = _verification_key(key)
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise _fail("bad_key", "the AS key for this id_token is not P-256")
    verify_es256(public_key, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)

    # Claims (only after the signature verified).
    if claims.get("iss") != issuer:
        raise _fail("iss_mismatch", "id_token iss is not the expected issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if (
        not isinstance(audiences, list)
        or not audiences
        or not all(isinstance(a, str) for a in audiences)
    ):
        raise _fail("aud_mismatch", "id_token aud is missing or malformed")
    if client_id not in audiences:
        raise _fail("aud_mismatch", "id_token aud does not contain our client_id")
    if any(a != client_id for a in audiences):
        raise _fail("aud_mismatch", "id_token aud contains an untrusted extra audience")
    if "azp" in claims and claims["azp"] != client_id:
        raise _fail("azp_mismatch", "id_token azp is not our client_id")
    now = clock.now()
    exp = claims.get("exp")
    iat = claims.get("iat")
    if not _is_number(exp):
        raise _fail("missing_claim", "id_token exp is missing or not a number")
    if not _is_number(iat):
        raise _fail("missing_claim", "id_token iat is missing or not a number")
    assert isinstance(exp, int | float) and isinstance(iat, int | float)
    if now > exp + skew:
        raise _fail("expired", "id_token has expired")
    if iat > now + skew:
        raise _fail("iat_in_future", "id_token iat is in the future beyond the allowed skew")
    if iat < now - skew - max_iat_age:
        raise _fail("iat_too_old", "id_token iat is too far in the past")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_number(nbf) or nbf > now + skew):
        raise _fail("not_yet_valid", "id_token nbf is in the future or not a number")
    if nonce is not None:
        got = claims.get("nonce")
        if not isinstance(got, str):
            raise _fail("nonce_mismatch", "id_token has no nonce but one was sent")
        if not hmac.compare_digest(got.encode("utf-8"), nonce.encode("utf-8")):
            raise _fail("nonce_mismatch", "id_token nonce differs from the one sent")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _fail("missing_claim", "id_token sub is missing")
    if expected_subject is not None and sub != expected_subject:
        raise _fail("sub_mismatch", "id_token sub differs from the grant's subject")
    at_hash = claims.get("at_hash")
    if (
        at_hash is not None
        and access_token is not None
        and (
            not isinstance(at_hash, str)
            or not hmac.compare_digest(
                at_hash.encode("utf-8"), _at_hash(access_token).encode("ascii")
            )
        )
    ):
        raise _fail("at_hash_mismatch", "id_token at_hash does not match the access token")
    _parse_vc_json(claims)
    return claims
