"""The strict JSON loader for AS input (RFC 8259; RFC 7515 section 5.2; RFC 8725; issue 8 s.4)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from broker import jose, strict_json
from broker.strict_json import InvalidJson, JsonLimits, loads, loads_object, nesting_depth

DEEP = 10_000


def _reason(data: bytes, limits: JsonLimits = strict_json.DOCUMENT_LIMITS) -> str:
    with pytest.raises(InvalidJson) as info:
        loads(data, limits)
    return info.value.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"iss":"a","iss":"b"}', "duplicate_member"),
        (b'{"a":{"k":1,"k":1}}', "duplicate_member"),
        (b'[{"x":1},{"y":{"z":[{"q":1,"q":2}]}}]', "duplicate_member"),
        (b"[" * DEEP + b"]" * DEEP, "too_deep"),
        (b"[" * DEEP, "too_deep"),  # unterminated: the C scanner would still recurse
        (b'{"a":' * DEEP + b"1" + b"}" * DEEP, "too_deep"),
        (b'{"x":"' + b"]" * 50 + b'",' + b'"y":' + b"[" * 40 + b"]" * 40 + b"}", "too_deep"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b'{"a":"\xc3\x28"}', "invalid_utf8"),  # invalid continuation byte
        (b'{"a":"\xed\xa0\x80"}', "invalid_utf8"),  # a surrogate encoded in UTF-8
        (b'{"a":"\xc0\xaf"}', "invalid_utf8"),  # overlong
        (b'{"a":"\\ud800"}', "lone_surrogate"),
        (b'{"\\udc00":1}', "lone_surrogate"),
        (b'["ok","\\udbff x"]', "lone_surrogate"),
        (b"NaN", "non_finite_number"),
        (b'{"exp":Infinity}', "non_finite_number"),
        (b"[-Infinity]", "non_finite_number"),
        (b'{"exp":1e400}', "non_finite_number"),
        (b"1" * 5000, "syntax"),  # over the interpreter's int digit limit
        (b"\xef\xbb\xbf{}", "syntax"),  # BOM
        (b"", "syntax"),
        (b"{'a':1}", "syntax"),
        (b'{"a":1} x', "syntax"),
        (b'"\\', "syntax"),
        (b'"unterminated' + b"[" * DEEP, "syntax"),  # the brackets are inside the string
    ],
)
def test_refused_with_a_stable_reason(data: bytes, reason: str) -> None:
    assert _reason(data) == reason


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b'{"a":1,"b":[true,null,1.5,"x"]}', {"a": 1, "b": [True, None, 1.5, "x"]}),
        (b'{"a":{"a":{"a":1}}}', {"a": {"a": {"a": 1}}}),  # same name at different levels
        (b'"\\ud83d\\ude00"', "\U0001f600"),  # a surrogate pair is one character
        (b'{"\\\\ud800":"x"}', {"\\ud800": "x"}),  # an escaped backslash, not a \u escape
        (b'{"s":"[[[[{{{{"}', {"s": "[[[[{{{{"}),
        ('{"nom":"Ren\u00e9e"}'.encode(), {"nom": "Ren\u00e9e"}),
        (b"[" * 32 + b"]" * 32, json.loads("[" * 32 + "]" * 32)),
    ],
)
def test_accepted(data: bytes, value: Any) -> None:
    assert loads(data) == value


def test_depth_limit_is_exact() -> None:
    limits = JsonLimits(max_depth=3)
    assert loads(b'{"a":[{}]}', limits) == {"a": [{}]}
    with pytest.raises(InvalidJson) as info:
        loads(b'{"a":[{"b":[]}]}', limits)
    assert info.value.reason == "too_deep"


def _recorder(calls: list[str], name: str) -> Callable[..., Any]:
    def record(*_args: Any, **_kwargs: Any) -> Any:
        calls.append(name)
        return 0

    return record


def test_size_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    monkeypatch.setattr(strict_json, "nesting_depth", _recorder(called, "scan"))
    monkeypatch.setattr(json, "loads", _recorder(called, "json"))
    with pytest.raises(InvalidJson) as info:
        loads(b" " * 1025, JsonLimits(max_bytes=1024))
    assert info.value.reason == "too_large"
    assert called == []


def test_deep_nesting_never_reaches_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The depth is bounded by the pre-scan, not by catching RecursionError afterwards."""
    called: list[str] = []
    monkeypatch.setattr(json, "loads", _recorder(called, "json"))
    for data in (b"[" * DEEP, b'{"a":' * DEEP, b"[" * DEEP + b"]" * DEEP):
        with pytest.raises(InvalidJson):
            loads(data)
    assert called == []
    # The same spy does see a shallow document: the spy is live.
    loads(b"[[1]]")
    assert called == ["json"]


def test_messages_do_not_carry_the_document() -> None:
    secret = "rt-SECRET-refresh-token-value"
    for data in (
        f'{{"refresh_token":"{secret}",}}'.encode(),
        f'{{"refresh_token":"{secret}","refresh_token":"{secret}"}}'.encode(),
        f'{{"refresh_token":"{secret}\xff"}}'.encode("latin-1"),
    ):
        with pytest.raises(InvalidJson) as info:
            loads(data)
        assert secret not in str(info.value)
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__ or info.value.__context__ is None


def test_loads_object_refuses_other_values() -> None:
    for data in (b"[]", b"1", b'"s"', b"null"):
        with pytest.raises(InvalidJson) as info:
            loads_object(data)
        assert info.value.reason == "not_object"


def test_jose_segments_are_strict() -> None:
    header = jose.b64url(b'{"alg":"ES256","alg":"none"}')
    token = f"{header}.{jose.b64url(b'{}')}.sig"
    with pytest.raises(InvalidJson) as info:
        jose.unverified_parts(token)
    assert info.value.reason == "duplicate_member"
    with pytest.raises(ValueError, match="base64url"):
        jose.decode_json_segment("e30=")  # padded
    with pytest.raises(ValueError, match="base64url"):
        jose.decode_json_segment("e3 0")
    with pytest.raises(InvalidJson) as info:
        jose.unverified_parts("a" * (strict_json.JWT_MAX_BYTES + 1))
    assert info.value.reason == "too_large"


# --- properties (seeded generators: deterministic, no extra dependency) ------------------------

_FRAGMENTS = [
    "{",
    "}",
    "[",
    "]",
    '"',
    "\\",
    ",",
    ":",
    "1",
    "e9",
    "-",
    "a",
    "u",
    "d800",
    "udc00",
    "true",
    "NaN",
    "Infinity",
    " ",
    "\x00",
    "\u00e9",
    "\ud83d",
    '"k":',
    "1e400",
]


def _random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(0, 2048))


def _jsonish(rng: random.Random) -> bytes:
    text = "".join(rng.choice(_FRAGMENTS) for _ in range(rng.randrange(0, 200)))
    return text.encode("utf-8", "surrogatepass")


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(8 if depth < 6 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randrange(-(2**70), 2**70)
    if kind == 3:
        return rng.uniform(-1e300, 1e300)
    if kind == 4:
        return "".join(
            chr(rng.choice([34, 92, 91, 123, 0x41, 0xE9, 0x1F600, 0xD800]))
            for _ in range(rng.randrange(6))
        )
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(rng.randrange(100)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _mutated(rng: random.Random) -> bytes:
    data = bytearray(json.dumps(_value(rng, 0)).encode())
    for _ in range(rng.randrange(1, 4)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


@pytest.mark.parametrize("generator", [_random_bytes, _jsonish, _mutated])
def test_any_input_gives_a_value_or_invalid_json(generator: Any) -> None:
    rng = random.Random(8725)
    limits = JsonLimits(max_bytes=1024, max_depth=4)
    outcomes: set[str] = set()
    for _ in range(2000):
        data = generator(rng)
        try:
            value = loads(data, limits)
        except InvalidJson as exc:
            outcomes.add(exc.reason)
            continue
        outcomes.add("ok")
        assert value == json.loads(data.decode("utf-8"))  # strict is a subset of json.loads
    assert len(outcomes) > 1  # the generator exercises more than one path


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def test_valid_json_round_trips_and_the_depth_scan_is_exact() -> None:
    rng = random.Random(7159)
    for _ in range(2000):
        value = _value(rng, 0)
        data = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        assert nesting_depth(data) == _depth(value)
        try:
            parsed = loads(data)
        except InvalidJson as exc:  # a generated lone surrogate, escaped or raw
            assert exc.reason in {"lone_surrogate", "invalid_utf8"}
            assert "\\ud800" in json.dumps(value)  # ensure_ascii: the escaped surrogate
            continue
        assert parsed == value
