"""The one reviewed table: python-pkcs11 exception (``CKR_*``) -> recovery action + broker error.

TEST-CATALOGUE D09. Every PKCS#11 failure maps to exactly one :class:`Action`:

- ``NEW_SESSION``: the session or a handle is gone (D01, D06): close it, open a new logged-in
  session, re-find key handles, retry once.
- ``RELOGIN``: the login state was lost (D04): same recovery, the new session logs in again.
- ``REINIT``: the library or device failed (D02, re-initialised library): ``C_Finalize`` +
  ``C_Initialize``, then as ``NEW_SESSION``.
- ``TOKEN_GONE``: the token or slot vanished (D03): look the token up again by label; if it is
  still absent raise :class:`broker.errors.TokenNotPresent` (retryable).
- ``PERMANENT``: never retried (PIN errors: lock-out risk, D05; wrong key type; policy refusals).
- ``BUSY``: transient device pressure; not retried here, reported as retryable
  :class:`broker.errors.HsmUnavailable`.

After a failed recovery the caller gets :class:`broker.errors.HsmUnavailable` (retryable), or the
permanent error the recovery itself ran into (e.g. ``PinIncorrect`` on re-login).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import pkcs11.exceptions as p11e

from broker.errors import (
    HsmUnavailable,
    InvalidKey,
    KeyNotFound,
    KeyStoreError,
    PinIncorrect,
    PinLocked,
    TokenNotPresent,
)


class Action(enum.Enum):
    NEW_SESSION = "new-session"
    RELOGIN = "re-login"
    REINIT = "re-init"
    TOKEN_GONE = "token-gone"  # noqa: S105 (not a password)
    PERMANENT = "permanent"
    BUSY = "busy"


RECOVERABLE = frozenset({Action.NEW_SESSION, Action.RELOGIN, Action.REINIT, Action.TOKEN_GONE})


@dataclass(frozen=True)
class Rule:
    action: Action
    error: type[KeyStoreError]
    what: str  # a fixed, secret-free description for the error message


_TABLE: dict[type[p11e.PKCS11Error], Rule] = {
    # D01 / D06: session or handle lost
    p11e.SessionHandleInvalid: Rule(Action.NEW_SESSION, HsmUnavailable, "session handle invalid"),
    p11e.SessionClosed: Rule(Action.NEW_SESSION, HsmUnavailable, "session closed"),
    p11e.OperationActive: Rule(Action.NEW_SESSION, HsmUnavailable, "operation already active"),
    p11e.OperationNotInitialized: Rule(
        Action.NEW_SESSION, HsmUnavailable, "operation not initialised"
    ),
    p11e.ObjectHandleInvalid: Rule(Action.NEW_SESSION, HsmUnavailable, "object handle invalid"),
    p11e.KeyHandleInvalid: Rule(Action.NEW_SESSION, HsmUnavailable, "key handle invalid"),
    # D04: login state lost
    p11e.UserNotLoggedIn: Rule(Action.RELOGIN, HsmUnavailable, "user not logged in"),
    # D02: device or library failure
    p11e.DeviceError: Rule(Action.REINIT, HsmUnavailable, "device error"),
    p11e.GeneralError: Rule(Action.REINIT, HsmUnavailable, "general error"),
    p11e.FunctionFailed: Rule(Action.REINIT, HsmUnavailable, "function failed"),
    # D03: token or slot gone
    p11e.TokenNotPresent: Rule(Action.TOKEN_GONE, TokenNotPresent, "token not present"),
    p11e.TokenNotRecognised: Rule(Action.TOKEN_GONE, TokenNotPresent, "token not recognised"),
    p11e.DeviceRemoved: Rule(Action.TOKEN_GONE, TokenNotPresent, "device removed"),
    p11e.SlotIDInvalid: Rule(Action.TOKEN_GONE, TokenNotPresent, "slot id invalid"),
    p11e.NoSuchToken: Rule(Action.TOKEN_GONE, TokenNotPresent, "no token with that label"),
    # D05: PIN errors are never retried
    p11e.PinIncorrect: Rule(Action.PERMANENT, PinIncorrect, "PIN incorrect"),
    p11e.PinLocked: Rule(Action.PERMANENT, PinLocked, "PIN locked"),
    p11e.PinExpired: Rule(Action.PERMANENT, PinLocked, "PIN expired"),
    p11e.PinInvalid: Rule(Action.PERMANENT, PinIncorrect, "PIN has invalid characters"),
    p11e.PinLenRange: Rule(Action.PERMANENT, PinIncorrect, "PIN length out of range"),
    p11e.UserPinNotInitialized: Rule(
        Action.PERMANENT, KeyStoreError, "user PIN of the token not initialised"
    ),
    p11e.AnotherUserAlreadyLoggedIn: Rule(
        Action.PERMANENT, KeyStoreError, "another user is logged in"
    ),
    # transient pressure (D07 / D08)
    p11e.SessionCount: Rule(Action.BUSY, HsmUnavailable, "too many sessions"),
    p11e.DeviceMemory: Rule(Action.BUSY, HsmUnavailable, "device out of memory"),
    p11e.HostMemory: Rule(Action.BUSY, HsmUnavailable, "host out of memory"),
    p11e.FunctionCancelled: Rule(Action.BUSY, HsmUnavailable, "function cancelled"),
    # keys and objects
    p11e.NoSuchKey: Rule(Action.PERMANENT, KeyNotFound, "no such key"),
    p11e.MultipleObjectsReturned: Rule(Action.PERMANENT, InvalidKey, "label is ambiguous"),
    p11e.KeyTypeInconsistent: Rule(Action.PERMANENT, InvalidKey, "key type inconsistent"),
    p11e.KeySizeRange: Rule(Action.PERMANENT, InvalidKey, "key size out of range"),
    p11e.DomainParamsInvalid: Rule(Action.PERMANENT, InvalidKey, "curve not supported"),
    p11e.AttributeSensitive: Rule(Action.PERMANENT, KeyStoreError, "attribute is sensitive"),
    p11e.KeyUnextractable: Rule(Action.PERMANENT, KeyStoreError, "key is not extractable"),
    p11e.KeyNotWrappable: Rule(Action.PERMANENT, KeyStoreError, "key is not wrappable"),
    p11e.MechanismInvalid: Rule(Action.PERMANENT, KeyStoreError, "mechanism not supported"),
    p11e.MechanismParamInvalid: Rule(
        Action.PERMANENT, KeyStoreError, "mechanism parameter invalid"
    ),
    p11e.FunctionNotSupported: Rule(Action.PERMANENT, KeyStoreError, "function not supported"),
    p11e.TemplateIncomplete: Rule(Action.PERMANENT, KeyStoreError, "template incomplete"),
    p11e.TemplateInconsistent: Rule(Action.PERMANENT, KeyStoreError, "template inconsistent"),
    p11e.AttributeValueInvalid: Rule(Action.PERMANENT, KeyStoreError, "attribute value invalid"),
    p11e.AttributeTypeInvalid: Rule(Action.PERMANENT, KeyStoreError, "attribute type invalid"),
    p11e.AttributeReadOnly: Rule(Action.PERMANENT, KeyStoreError, "attribute read-only"),
    p11e.DataInvalid: Rule(Action.PERMANENT, KeyStoreError, "data invalid"),
    p11e.DataLenRange: Rule(Action.PERMANENT, KeyStoreError, "data length out of range"),
    p11e.SessionReadOnly: Rule(Action.PERMANENT, KeyStoreError, "session is read-only"),
    p11e.TokenWriteProtected: Rule(Action.PERMANENT, KeyStoreError, "token write-protected"),
    p11e.ArgumentsBad: Rule(Action.PERMANENT, KeyStoreError, "bad arguments"),
}

# python-pkcs11 raises the bare base class for codes it does not map, notably
# CKR_CRYPTOKI_NOT_INITIALIZED after someone ran C_Finalize: re-initialise once.
_UNMAPPED = Rule(Action.REINIT, HsmUnavailable, "unmapped PKCS#11 error")


def rule_for(exc: BaseException) -> Rule:
    """The rule for one python-pkcs11 exception (exact class first, then its bases)."""
    for klass in type(exc).__mro__:
        rule = _TABLE.get(klass)
        if rule is not None:
            return rule
    return _UNMAPPED


def table() -> dict[type[p11e.PKCS11Error], Rule]:
    """A copy of the table, for review and the table-driven test."""
    return dict(_TABLE)


def to_broker_error(exc: BaseException, operation: str) -> KeyStoreError:
    """The broker error for ``exc`` during ``operation`` (caller does ``raise ... from exc``)."""
    rule = rule_for(exc)
    return rule.error(f"PKCS#11 {operation} failed: {rule.what} ({type(exc).__name__})")
