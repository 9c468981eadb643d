"""HSM checks: module, token (by label), login, client key and its custody attributes, the
sign/verify self-test (TEST-CATALOGUE D11), did == [oauth].client_id, the sealing key, and no
half-made signing key in the token (only its public or only its private object: a key ceremony
cut off between the two).

The checks run in order and each one needs the one before it; a failure turns the rest into
"skip" with the reason. The key store opened here is closed before returning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pkcs11.exceptions as p11e

from broker.ceremony.orphans import half_made
from broker.ceremony.selftest import run_selftest
from broker.clock import Clock
from broker.config import Settings
from broker.doctor.result import CheckResult, Status, fail, failed, ok, skip, warn
from broker.errors import BrokerError
from broker.keys.api import KeyInfo
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.pkcs11 import lib as pkcs11_lib
from broker.keys.pkcs11.hints import missing_token_hint, with_hint
from broker.keys.pkcs11.recovery import to_broker_error
from broker.keys.uri import KeyRef, parse_key_uri, read_pin_file

NAMES = (
    "hsm.module",
    "hsm.token",
    "hsm.login",
    "hsm.client_key",
    "hsm.key_attributes",
    "hsm.selftest",
    "hsm.client_id",
    "hsm.sealing",
    "hsm.half_keys",
)
# Attributes that must hold for the client's private key (I01), and the operations it must not
# allow besides signing (a warning: the key still works, but is not sign-only).
_REQUIRED = {"sensitive": True, "extractable": False, "private": True, "token": True, "sign": True}
_NOT_SIGN_ONLY = ("decrypt", "derive", "unwrap")
_SEAL_AAD = b"broker-doctor"


@dataclass
class HsmOutcome:
    results: list[CheckResult] = field(default_factory=list)
    did: str | None = None  # the client key's did:key, when the key was read

    def add(self, result: CheckResult) -> bool:
        self.results.append(result)
        return result.status is not Status.FAIL

    def skip_rest(self, reason: str) -> None:
        done = {r.name for r in self.results}
        self.results.extend(skip(n, reason) for n in NAMES if n not in done)


def check_hsm(settings: Settings, clock: Clock) -> HsmOutcome:
    out = HsmOutcome()
    ref = parse_key_uri(settings.key.uri)  # validated by load_settings
    label = ref.object or ""
    try:
        module = ref.module_path or pkcs11_lib.default_module_path()
        lib = pkcs11_lib.load(module)
    except BrokerError as exc:
        out.add(failed("hsm.module", exc))
        out.skip_rest("the PKCS#11 module did not load")
        return out
    out.add(ok("hsm.module", f"{lib.path} loaded"))

    try:
        with lib.lock:
            token = lib.lib.get_token(token_label=ref.token)
            model = str(getattr(token, "model", "") or "").strip()
    except p11e.PKCS11Error as exc:
        error = to_broker_error(exc, f"finding token {ref.token!r}")
        if isinstance(exc, p11e.NoSuchToken):
            with lib.lock:
                hint = missing_token_hint(lib.lib, lib.path, ref.token)
            error = with_hint(error, hint)
        out.add(failed("hsm.token", error))
        out.skip_rest(f"token {ref.token!r} is not available")
        return out
    out.add(ok("hsm.token", f"token {ref.token!r} present" + (f" ({model})" if model else "")))

    try:
        pin = read_pin_file(settings.key.pin_file)
        keystore = Pkcs11KeyStore(lib.path, ref.token, pin)
    except BrokerError as exc:
        out.add(failed("hsm.login", exc))
        out.skip_rest("no login to the token")
        return out
    try:
        out.add(ok("hsm.login", f"logged in to token {ref.token!r} as user"))
        _key_checks(out, keystore, label, settings, clock)
        _sealing_check(out, keystore, settings)
        out.add(_half_keys(keystore, ref.token))
    finally:
        keystore.close()
    return out


def _key_checks(
    out: HsmOutcome, keystore: Pkcs11KeyStore, label: str, settings: Settings, clock: Clock
) -> None:
    try:
        info = keystore.get(label)
    except BrokerError as exc:
        out.add(failed("hsm.client_key", exc))
        for name in ("hsm.key_attributes", "hsm.selftest", "hsm.client_id"):
            out.add(skip(name, f"client key {label!r} is not usable"))
        return
    out.did = info.did
    out.add(ok("hsm.client_key", f"key {label!r}: {info.did}"))
    out.add(_attributes(info))
    try:
        report = run_selftest(keystore.signer(label), info, clock=clock)
    except BrokerError as exc:
        out.add(failed("hsm.selftest", exc))
    else:
        out.add(
            ok("hsm.selftest", f"ES256 signature ({report.mechanism}) verifies with the did:key")
        )
    configured = settings.oauth.client_id
    if configured is None:
        out.add(ok("hsm.client_id", "[oauth].client_id not set: the key's did:key is used"))
    elif configured == info.did:
        out.add(ok("hsm.client_id", "[oauth].client_id equals the key's did:key"))
    else:
        out.add(
            fail(
                "hsm.client_id",
                f"[oauth].client_id {configured} differs from the key's did:key {info.did} "
                "(the Verifier would reject every assertion)",
            )
        )


def _attributes(info: KeyInfo) -> CheckResult:
    """I01: sensitive, non-extractable, a private token object allowed to sign."""
    attrs = info.attributes
    wrong = [
        f"{name}={str(attrs.get(name)).lower()}"
        for name, wanted in _REQUIRED.items()
        if attrs.get(name) is not wanted
    ]
    if wrong:
        return fail("hsm.key_attributes", "private key has " + ", ".join(wrong))
    extra = [name for name in _NOT_SIGN_ONLY if attrs.get(name)]
    if extra:
        return warn(
            "hsm.key_attributes", "private key is not sign-only: allows " + ", ".join(extra)
        )
    origin = (
        "generated in the token"
        if attrs.get("never_extractable") and attrs.get("always_sensitive")
        else "imported (not generated in the token)"
    )
    return ok("hsm.key_attributes", f"sensitive, non-extractable, sign-only; {origin}")


def _sealing_check(out: HsmOutcome, keystore: Pkcs11KeyStore, settings: Settings) -> None:
    label = settings.key.sealing_key_label
    if label is None:
        out.add(fail("hsm.sealing", "[key].sealing_key_label is not set (serve refuses to start)"))
        return
    try:
        sealer = keystore.sealer(label)
        plaintext = os.urandom(32)
        sealed = sealer.seal(plaintext, _SEAL_AAD)
        if sealer.open(sealed, _SEAL_AAD) != plaintext:
            out.add(fail("hsm.sealing", f"sealing key {label!r}: round trip returned other data"))
            return
    except BrokerError as exc:
        out.add(failed("hsm.sealing", exc, f"sealing key {label!r}"))
        return
    try:
        sealer.open(sealed, _SEAL_AAD + b"-other")
    except BrokerError:
        out.add(ok("hsm.sealing", f"sealing key {label!r}: AES-256-GCM seal/open round trip ok"))
        return
    out.add(fail("hsm.sealing", f"sealing key {label!r}: a wrong context was not detected"))


def _half_keys(keystore: Pkcs11KeyStore, token: str) -> CheckResult:
    """A signing key of which only one object is in the token cannot sign and blocks a new key
    of its label; ``broker keys destroy`` removes it (the keys commands refuse to run until then)."""
    try:
        halves = keystore.list_half_keys()
    except BrokerError as exc:
        return failed("hsm.half_keys", exc)
    if not halves:
        return ok("hsm.half_keys", "every signing key has both its private and public object")
    named = "; ".join(
        f"key {h.label!r} (id {h.key_id.hex()}): {half_made(h.present, open_intent=False)}, "
        f"remove it with 'broker keys destroy --key "
        f"{KeyRef(token=token, object=h.label, id=h.key_id).to_uri().replace(';type=private', '')}'"
        for h in halves
    )
    return warn(
        "hsm.half_keys",
        f"{len(halves)} half-made key(s): {named}; then run the ceremony that made it again",
    )
