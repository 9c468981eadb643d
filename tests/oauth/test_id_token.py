# ruff: noqa: PLR0917  (pytest injects fixtures as positional parameters)
"""ID token validation (OIDC Core 3.1.3.7): catalogue B01-B07, A08c."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import TokenValidationError
from broker.jose import b64url
from broker.oauth.config import ClientConfig
from broker.oauth.id_token import P256_ORDER, VC_JSON_ERROR_CLAIM, validate_id_token
from broker.oauth.metadata import JwksCache, MetadataCache
from tests.clock import FakeClock
from tests.oauth.fakeas import DROP, ISSUER, AsKey, FakeAS

NONCE = "n-0S6_WzA2Mj-n-0S6_WzA2Mj"


@pytest.fixture
def jwks(http: httpx.AsyncClient, config: ClientConfig, clock: FakeClock) -> JwksCache:
    return JwksCache(http, MetadataCache(http, config, clock), config, clock)


async def _validate(
    token: str,
    jwks: JwksCache,
    config: ClientConfig,
    clock: FakeClock,
    *,
    nonce: str | None = NONCE,
    expected_subject: str | None = None,
    access_token: str | None = None,
) -> dict[str, Any]:
    return await validate_id_token(
        token,
        jwks=jwks,
        issuer=ISSUER,
        client_id=config.client_id,
        clock=clock,
        skew=60,
        nonce=nonce,
        expected_subject=expected_subject,
        access_token=access_token,
    )


async def _reject(
    token: str, reason: str, jwks: JwksCache, config: ClientConfig, clock: FakeClock, **kw: Any
) -> None:
    with pytest.raises(TokenValidationError) as info:
        await _validate(token, jwks, config, clock, **kw)
    assert info.value.reason == reason
    assert not info.value.retryable


async def test_valid_id_token_is_accepted(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE)
    claims = await _validate(token, jwks, config, clock)
    assert claims["sub"] == "did:key:zDnaeUser"
    assert claims["nonce"] == NONCE


def _flip_r(sig: bytes) -> bytes:
    return bytes([sig[0] ^ 1]) + sig[1:]


def _flip_s(sig: bytes) -> bytes:
    return sig[:63] + bytes([sig[63] ^ 1])


def _s_ge_n(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:], "big")
    return sig[:32] + (s + P256_ORDER if s + P256_ORDER < 2**256 else P256_ORDER).to_bytes(
        32, "big"
    )


def _der(sig: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


@pytest.mark.parametrize(
    "mangle",
    [
        _flip_r,
        _flip_s,
        _s_ge_n,
        lambda sig: bytes(32) + sig[32:],  # r = 0
        lambda sig: sig[:63],  # 63 bytes
        lambda sig: sig + b"\x00",  # 65 bytes
        _der,  # DER-encoded
    ],
    ids=["bitflip_r", "bitflip_s", "s_ge_n", "r_zero", "63_bytes", "65_bytes", "der"],
)
async def test_b01_corrupted_signature_is_rejected(
    fake_as: FakeAS,
    jwks: JwksCache,
    config: ClientConfig,
    clock: FakeClock,
    mangle: Callable[[bytes], bytes],
) -> None:
    now = int(clock.now())
    claims = {
        "iss": ISSUER,
        "aud": config.client_id,
        "sub": "u",
        "iat": now,
        "exp": now + 60,
        "nonce": NONCE,
    }
    await _reject(fake_as.key.sign(claims, mangle=mangle), "bad_signature", jwks, config, clock)


async def test_b01_signature_by_a_wrong_key_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    impostor = AsKey(kid=fake_as.key.kid)  # same kid, other key
    now = int(clock.now())
    token = impostor.sign(
        {
            "iss": ISSUER,
            "aud": config.client_id,
            "sub": "u",
            "iat": now,
            "exp": now + 60,
            "nonce": NONCE,
        }
    )
    await _reject(token, "bad_signature", jwks, config, clock)


def _segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj).encode())


async def test_b02_alg_none_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    now = int(clock.now())
    claims = {
        "iss": ISSUER,
        "aud": config.client_id,
        "sub": "u",
        "iat": now,
        "exp": now + 60,
        "nonce": NONCE,
    }
    token = f"{_segment({'alg': 'none'})}.{_segment(claims)}."
    await _reject(token, "alg_not_allowed", jwks, config, clock)
    assert fake_as.count("/oidc/jwks") == 0  # rejected before any key lookup


async def test_b02_hs256_keyed_with_the_public_key_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    now = int(clock.now())
    claims = {
        "iss": ISSUER,
        "aud": config.client_id,
        "sub": "u",
        "iat": now,
        "exp": now + 60,
        "nonce": NONCE,
    }
    header = {"alg": "HS256", "kid": fake_as.key.kid}
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    secret = json.dumps(fake_as.key.jwk()).encode()
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    await _reject(f"{signing_input}.{b64url(mac)}", "alg_not_allowed", jwks, config, clock)


@pytest.mark.parametrize("alg", ["RS256", "PS256", "ES384", "EdDSA"])
async def test_b02_other_asymmetric_algs_are_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, alg: str
) -> None:
    now = int(clock.now())
    claims = {
        "iss": ISSUER,
        "aud": config.client_id,
        "sub": "u",
        "iat": now,
        "exp": now + 60,
        "nonce": NONCE,
    }
    token = fake_as.key.sign(claims, header={"alg": alg, "kid": fake_as.key.kid})
    await _reject(token, "alg_not_allowed", jwks, config, clock)


@pytest.mark.parametrize("iss", ["https://evil.example.org", ISSUER + "/", DROP])
async def test_b03_wrong_or_missing_iss_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, iss: Any
) -> None:
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, iss=iss)
    await _reject(token, "iss_mismatch", jwks, config, clock)


@pytest.mark.parametrize(
    "aud",
    ["did:key:zDnaeOther", DROP, ["CLIENT", "https://other.example.org"], [], 7],
    ids=["wrong", "missing", "untrusted_extra", "empty_list", "number"],
)
async def test_b04_bad_aud_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, aud: Any
) -> None:
    if isinstance(aud, list):
        aud = [config.client_id if a == "CLIENT" else a for a in aud]
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, aud=aud)
    await _reject(token, "aud_mismatch", jwks, config, clock)


async def test_b04_aud_as_single_element_array_is_accepted(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    token = fake_as.id_token(
        config.client_id,
        now=clock.now(),
        nonce=NONCE,
        aud=[config.client_id],
        azp=config.client_id,
    )
    assert (await _validate(token, jwks, config, clock))["aud"] == [config.client_id]


async def test_b04_wrong_azp_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, azp="other")
    await _reject(token, "azp_mismatch", jwks, config, clock)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -360}, "expired"),  # 6 min past
        ({"exp": DROP}, "missing_claim"),
        ({"iat": DROP}, "missing_claim"),
        ({"iat": "now"}, "missing_claim"),
        ({"iat": -7 * 86400, "exp": 60}, "iat_too_old"),  # a week old
        ({"iat": 600, "exp": 660}, "iat_in_future"),  # 10 min ahead
        ({"nbf": 600}, "not_yet_valid"),
    ],
)
async def test_b05_time_claims_outside_skew_are_rejected(
    fake_as: FakeAS,
    jwks: JwksCache,
    config: ClientConfig,
    clock: FakeClock,
    claims: dict[str, Any],
    reason: str,
) -> None:
    now = int(clock.now())
    values = {k: (v if v is DROP or isinstance(v, str) else now + v) for k, v in claims.items()}
    token = fake_as.id_token(config.client_id, now=now, nonce=NONCE, **values)
    await _reject(token, reason, jwks, config, clock)


@pytest.mark.parametrize(("shift", "ok"), [(59, True), (-59, True), (61, False), (-61, False)])
async def test_b05_broker_clock_shift_within_skew(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, shift: int, ok: bool
) -> None:
    """id_token with iat = exp = AS now; broker clock shifted by +-59 s (accepted) or +-61 s."""
    as_now = int(clock.now())
    token = fake_as.id_token(config.client_id, now=as_now, nonce=NONCE, iat=as_now, exp=as_now)
    clock.set(as_now + shift)
    if ok:
        assert (await _validate(token, jwks, config, clock))["iat"] == as_now
    else:
        await _reject(token, "expired" if shift > 0 else "iat_in_future", jwks, config, clock)


@pytest.mark.parametrize("nonce", ["a-different-nonce-value-1234", DROP, 5])
async def test_b06_wrong_or_missing_nonce_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, nonce: Any
) -> None:
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=nonce)
    await _reject(token, "nonce_mismatch", jwks, config, clock)


async def test_b06_id_token_replayed_into_a_later_flow_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE)
    await _validate(token, jwks, config, clock)
    await _reject(token, "nonce_mismatch", jwks, config, clock, nonce="the-next-flow-nonce-xyz")


@pytest.mark.parametrize("sub", [DROP, "", 42])
async def test_b07_missing_sub_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock, sub: Any
) -> None:
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, sub=sub)
    await _reject(token, "missing_claim", jwks, config, clock)


def _at_hash(at: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(at.encode()).digest()[:16]).rstrip(b"=").decode()


async def test_b07_wrong_at_hash_is_rejected_right_one_accepted(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    good = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, at_hash=_at_hash("AT"))
    assert (await _validate(good, jwks, config, clock, access_token="AT"))["at_hash"]
    bad = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, at_hash=_at_hash("X"))
    await _reject(bad, "at_hash_mismatch", jwks, config, clock, access_token="AT")


async def test_a08c_refreshed_id_token_with_other_sub_is_rejected(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    token = fake_as.id_token(config.client_id, now=clock.now(), sub="did:key:zDnaeSomeoneElse")
    await _reject(
        token, "sub_mismatch", jwks, config, clock, nonce=None, expected_subject="did:key:zDnaeUser"
    )
    same = fake_as.id_token(config.client_id, now=clock.now())
    claims = await _validate(
        same, jwks, config, clock, nonce=None, expected_subject="did:key:zDnaeUser"
    )
    assert claims["sub"] == "did:key:zDnaeUser"


async def test_unknown_kid_refetches_once_then_fails(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    stranger = AsKey()
    now = int(clock.now())
    token = stranger.sign(
        {
            "iss": ISSUER,
            "aud": config.client_id,
            "sub": "u",
            "iat": now,
            "exp": now + 60,
            "nonce": NONCE,
        }
    )
    await _reject(token, "unknown_kid", jwks, config, clock)
    assert fake_as.count("/oidc/jwks") == 2


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.??.xx", "e30.e30"])
async def test_malformed_id_token_is_rejected(
    jwks: JwksCache, config: ClientConfig, clock: FakeClock, token: str
) -> None:
    await _reject(token, "malformed", jwks, config, clock)


async def test_dome_vc_json_is_parsed_into_vc(
    fake_as: FakeAS, jwks: JwksCache, config: ClientConfig, clock: FakeClock
) -> None:
    vc = {"type": ["VerifiableCredential", "LEARCredentialEmployee"], "credentialSubject": {}}
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, vc_json=json.dumps(vc))
    claims = await _validate(token, jwks, config, clock)
    assert claims["vc"] == vc
    assert VC_JSON_ERROR_CLAIM not in claims


@pytest.mark.parametrize(
    ("vc_json", "error"),
    [("{not json", "not_json"), ("[1]", "not_an_object"), (12, "not_a_string")],
)
async def test_dome_malformed_vc_json_is_recorded_not_fatal(
    fake_as: FakeAS,
    jwks: JwksCache,
    config: ClientConfig,
    clock: FakeClock,
    vc_json: Any,
    error: str,
) -> None:
    token = fake_as.id_token(config.client_id, now=clock.now(), nonce=NONCE, vc_json=vc_json)
    claims = await _validate(token, jwks, config, clock)
    assert claims[VC_JSON_ERROR_CLAIM] == error
    assert "vc" not in claims


def test_signature_helper_is_sound() -> None:
    """The fake AS really produces raw r||s that verifies (so B01 failures are meaningful)."""
    key = AsKey()
    token = key.sign({"a": 1})
    head, body, sig = token.split(".")
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from broker.jose import b64url_decode

    raw = b64url_decode(sig)
    assert len(raw) == 64
    key.private.public_key().verify(
        encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")),
        f"{head}.{body}".encode(),
        ec.ECDSA(hashes.SHA256()),
    )
