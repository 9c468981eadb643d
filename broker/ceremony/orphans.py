"""Orphan keys: keys in the token that the audit log does not account for.

A creating ceremony (generate, import, generate-sealing-key) appends ``<action>.intent`` naming
the key (token, label, id) *before* the key is created, and the completion record ``<action>``
after it. Replaying the hash-chained log (:func:`broker.audit.verified_records`) gives, per
token and label, the key the log vouches for (created or adopted, not destroyed since) and the
intents still open. A key in the token is an *orphan* when

* no completed record vouches for it (created outside the ceremonies, or a record was lost),
* its creation was announced by an intent that never completed (the ceremony was killed between
  creating the key and recording it), or
* the log vouches for a different key under its label (another id or did: replaced outside), or
* it is *half-made*: only its public or only its private object is in the token (an import,
  which creates the two with two ``C_CreateObject`` calls, killed between them; or an object
  removed outside the broker). Such a key is an orphan whatever the log says, and it cannot be
  adopted: ``broker keys destroy`` removes the lone object, then the ceremony is run again.

An open intent whose key is *not* in the token is harmless: the ceremony died before creating
it, and the next run starts clean. ``broker keys adopt`` records an orphan after the operator
confirms its did (or id), ``broker keys destroy`` removes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

SIGNING = "signing"
SEALING = "sealing"
INTENT_SUFFIX = ".intent"
CREATING = frozenset(
    {
        "keys.generate",
        "keys.import",
        "keys.generate_sealing_key",
        "keys.adopt",
        "keys.rotate.prepare",
    }
)
DESTROYING = frozenset({"keys.destroy", "keys.rotate.retire"})
NO_RECORD = "no completed audit record"
OPEN_INTENT = "intent recorded but the ceremony never completed"
OTHER_KEY = "the audit log records another key under this label"


@dataclass(frozen=True)
class TokenKey:
    """One key found in the token: a P-256 signing pair or an AES sealing key."""

    kind: str  # SIGNING or SEALING
    label: str
    key_id: bytes
    did: str | None = None  # signing keys only
    fingerprint: str | None = None  # signing keys only
    half: str | None = None  # a half-made signing key: "public" or "private", the object there


@dataclass(frozen=True)
class Orphan:
    key: TokenKey
    why: str

    @property
    def adoptable(self) -> bool:
        return self.key.half is None

    def describe(self) -> str:
        if self.key.half is not None:
            return f"half-made key {self.key.label!r} (id {self.key.key_id.hex()}): {self.why}"
        what = "sealing key" if self.key.kind == SEALING else "key"
        ident = self.key.did or f"id {self.key.key_id.hex()}"
        return f"{what} {self.key.label!r} ({ident}): {self.why}"


@dataclass(frozen=True)
class _Named:
    token: str
    kind: str
    label: str
    key_id: bytes | None


def _named(uri: object, action: str) -> _Named | None:
    """Token, kind, label and id of the key a record's ``key_uri`` names (``None``: no key)."""
    if not isinstance(uri, str) or not uri.startswith("pkcs11:"):
        return None
    attrs: dict[str, bytes] = {}
    for item in uri[len("pkcs11:") :].partition("?")[0].split(";"):
        name, _, value = item.partition("=")
        attrs[name] = unquote_to_bytes(value)
    if "token" not in attrs or "object" not in attrs:
        return None
    sealing = attrs.get("type") == b"secret-key" or action.startswith("keys.generate_sealing_key")
    return _Named(
        token=attrs["token"].decode("utf-8", "replace"),
        kind=SEALING if sealing else SIGNING,
        label=attrs["object"].decode("utf-8", "replace"),
        key_id=attrs.get("id"),
    )


@dataclass(frozen=True)
class _Vouched:
    key_id: bytes | None
    did: str | None


Slot = tuple[str, str, str]  # token, kind, label


@dataclass(frozen=True)
class AuditedKeys:
    """What the audit log vouches for, per (token, kind, label), and the open intents."""

    vouched: Mapping[Slot, _Vouched]
    open_intents: frozenset[Slot]

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> AuditedKeys:
        vouched: dict[Slot, _Vouched] = {}
        intents: set[Slot] = set()
        for record in records:
            action = str(record.get("action", ""))
            named = _named(record.get("key_uri"), action)
            if named is None:
                continue
            slot = (named.token, named.kind, named.label)
            if action.endswith(INTENT_SUFFIX):
                intents.add(slot)
                continue
            if action in CREATING:
                intents.discard(slot)  # the ceremony completed, whatever its outcome
                if record.get("outcome") == "ok":
                    vouched[slot] = _Vouched(named.key_id, _str_or_none(record.get("did")))
            elif action in DESTROYING and record.get("outcome") == "ok":
                # destroy removes every object carrying the label
                for kind in (SIGNING, SEALING):
                    vouched.pop((named.token, kind, named.label), None)
                    intents.discard((named.token, kind, named.label))
        return cls(vouched=vouched, open_intents=frozenset(intents))

    def orphans(self, token: str, keys: Iterable[TokenKey]) -> list[Orphan]:
        """The keys of ``token`` the log does not account for, in label order."""
        found = []
        for key in sorted(keys, key=lambda k: (k.label, k.kind)):
            slot = (token, key.kind, key.label)
            if key.half is not None:
                found.append(Orphan(key, half_made(key.half, slot in self.open_intents)))
                continue
            if slot in self.open_intents:
                found.append(Orphan(key, OPEN_INTENT))
                continue
            vouched = self.vouched.get(slot)
            if vouched is None:
                found.append(Orphan(key, NO_RECORD))
            elif (vouched.key_id is not None and vouched.key_id != key.key_id) or (
                key.did is not None and vouched.did != key.did
            ):
                found.append(Orphan(key, OTHER_KEY))
        return found


def half_made(present: str, open_intent: bool) -> str:
    """Why a half-made key is an orphan: which object is there, which one is missing."""
    missing = "private" if present == "public" else "public"
    why = f"only its {present} key object is in the token, its {missing} key object is missing"
    if open_intent:
        return why + " (its ceremony was cut off: intent recorded, never completed)"
    return why + " (a key creation or removal was cut off)"


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
