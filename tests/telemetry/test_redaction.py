"""The redaction layer as pure functions: what is scrubbed, and what must stay readable."""

from __future__ import annotations

import pytest

from broker.telemetry.redaction import REDACTED, is_sensitive_key, redact_text, redact_value

JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6ImRpZDprZXk6ekRuIn0.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
)
OPAQUE_RT = "Xk3nq0aZ9PqL2mvB7tYw4sR8uE1oN6cH5jG0fD2kA9s"  # oidc-provider style, 43 chars
CODE = "550e8400-e29b-41d4-a716-446655440000"  # DOME codes are UUIDs
DID = "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"
# base58btc may spell "eyJ" by chance, as a JWT starts
DID_WITH_EYJ = "did:key:zDnaeyJ7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"id_token was {JWT} ok", JWT),
        (f"partial jwt eyJhbGciOiJFUzI1NiJ9.{'a' * 10}", "eyJhbGciOiJFUzI1NiJ9"),
        (f"Authorization: Bearer {OPAQUE_RT[:20]}", OPAQUE_RT[:20]),
        (f"header bearer {OPAQUE_RT}", OPAQUE_RT),
        (f"rotated to {OPAQUE_RT} now", OPAQUE_RT),
        (f"rt={OPAQUE_RT}", OPAQUE_RT),
        (
            "hex blob " + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "9f86d081884c7d65",
        ),
        ("refresh_token=short1", "short1"),
        ('{"refresh_token": "abc", "token_type": "Bearer"}', "abc"),
        ("grant_type=authorization_code&code=" + CODE + "&state=s1", CODE),
        ("form client_assertion=abc.def.ghi&client_id=x", "abc.def.ghi"),
        ("code_verifier: verifier-value-1", "verifier-value-1"),
        ("request=xyz.abc.def", "xyz.abc.def"),
        ("password = hunter2", "hunter2"),
        ("user pin 87654321 rejected", "87654321"),
        ("C_Login failed: PIN: 1234", "1234"),
        ("client_secret='s3cr3t'", "s3cr3t"),
        ("vp_token=abcdef", "abcdef"),
        (f"body assertion%3D{JWT}%26x", JWT),
        (f"after a did {DID_WITH_EYJ} comes {JWT}", JWT),
        (f"did:key:{JWT}", JWT),
    ],
)
def test_h02_secret_in_text_is_scrubbed(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert REDACTED in out


@pytest.mark.parametrize(
    "text",
    [
        f"kid {DID}",
        "grant 550e8400-e29b-41d4-a716-446655440000 refreshed",
        "fingerprint sha256:" + "ab" * 32,
        "token_endpoint=https://verifier.example/oidc/token status_code=400 error=invalid_grant",
        "token_type=Bearer grant_type=refresh_token",
        "pin-source=file:/run/secrets/user_pin",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "supercalifragilisticexpialidociousandmorewords",
        "12345678901234567890123456789012345",
        DID_WITH_EYJ,
        f"subject {DID_WITH_EYJ}#{DID_WITH_EYJ[8:]}",
    ],
)
def test_public_identifiers_stay_readable(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("pin", True),
        ("PIN", True),
        ("user-pin", True),
        ("refresh_token", True),
        ("Refresh-Token", True),
        ("oauth.refresh_token", True),
        ("code", True),
        ("code_verifier", True),
        ("client_assertion", True),
        ("request", True),
        ("client_secret", True),
        ("db_password", True),
        ("authorization", True),
        ("token", True),
        ("token_type", False),
        ("token_endpoint", False),
        ("status_code", False),
        ("grant_id", False),
        ("kid", False),
        ("request_uri_host", False),
    ],
)
def test_sensitive_key_names(key: str, sensitive: bool) -> None:
    assert is_sensitive_key(key) is sensitive


def test_redact_value_walks_containers_and_stringifies_objects() -> None:
    class Leaky:
        def __str__(self) -> str:
            return f"Leaky(refresh_token={OPAQUE_RT})"

    value = {
        "grant_id": "g-1",
        "refresh_token": OPAQUE_RT,
        "nested": {"pin": "1234", "list": [JWT, 3, None, True], "ok": "fine"},
        "obj": Leaky(),
        "raw": b"\x00\x01secret",
        "tuple": (JWT,),
    }
    out = redact_value(value)
    assert out["grant_id"] == "g-1"
    assert out["refresh_token"] == REDACTED
    assert out["nested"]["pin"] == REDACTED
    assert out["nested"]["list"] == [REDACTED, 3, None, True]
    assert out["nested"]["ok"] == "fine"
    assert OPAQUE_RT not in out["obj"]
    assert out["raw"] == "<8 bytes>"
    assert out["tuple"] == [REDACTED]


def test_redact_value_bounds_depth() -> None:
    deep: dict[str, object] = {"x": "leaf"}
    for _ in range(20):
        deep = {"d": deep}
    out = redact_value(deep)
    for _ in range(9):
        out = out["d"]
    assert out == REDACTED


@pytest.mark.parametrize(
    "text",
    [
        'HTTP Request: POST https://verifier.example/oidc/token "HTTP/1.1 200 OK"',
        'HTTP Request: GET https://verifier.example/.well-known/openid-configuration "HTTP/1.1 200 OK"',
        "request=DELETE",
    ],
)
def test_http_method_after_request_stays_readable(text: str) -> None:
    """httpx's INFO line names the method after ``Request:``; the method is not a secret."""
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("request: POSTeyJhbGciOiJFUzI1NiJ9", "POSTeyJ"),
        ("request=Post", "Post"),
        ("request=POST.abc.def", "POST.abc.def"),
        ("request: xyz.abc.def", "xyz.abc.def"),
    ],
)
def test_request_values_other_than_a_bare_method_are_still_redacted(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out and REDACTED in out
