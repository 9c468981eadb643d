"""``broker keys ...``: the key ceremony commands.

Each command resolves the key URI (``--key`` or ``$BROKER_KEY_URI``; the PIN only from a file),
opens the token through the injected :class:`broker.ceremony.backend.KeyBackend`, does one
thing, and appends one audit record (:mod:`broker.audit`) whether it succeeded or failed. The
audit log is checked *before* the token is touched: a ceremony never runs unaudited.

Errors propagate as :class:`broker.errors.BrokerError`; the ``broker`` entry point turns them
into one line on stderr and the exit status.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from broker.audit import AuditLog, verified_records, verify_chain
from broker.ceremony import output, tsl
from broker.ceremony.backend import (
    CeremonyStore,
    KeyBackend,
    KeyTarget,
    refuse_inline_pin,
)
from broker.ceremony.faults import CrashPoint
from broker.ceremony.orphans import (
    INTENT_SUFFIX,
    SEALING,
    SIGNING,
    AuditedKeys,
    Orphan,
    TokenKey,
)
from broker.ceremony.selftest import run_selftest
from broker.ceremony.signals import deferred_signals
from broker.clock import Clock, SystemClock
from broker.errors import (
    AuditError,
    BrokerError,
    ConfigError,
    ConfirmationMismatch,
    InvalidArgument,
    InvalidKeyUri,
    KeyNotFound,
    OrphanKey,
)
from broker.keys.api import KeyInfo
from broker.keys.uri import KeyRef

if TYPE_CHECKING:
    from broker.ceremony.rotate_commands import RotationDeps

KEY_URI_ENV = "BROKER_KEY_URI"
AUDIT_LOG_ENV = "BROKER_AUDIT_LOG"
DEFAULT_AUDIT_LOG = "broker-audit.jsonl"
RANDOM_ID_BYTES = 8
MAX_KEY_FILE_BYTES = 64 * 1024

Result = tuple[dict[str, Any], str]


@dataclass
class Facts:
    """What the audit record will say about the key, filled in as the command learns it.

    A creating command calls :meth:`intend` just before it creates the key: that appends the
    ``<action>.intent`` record and enters the critical section (SIGINT/SIGTERM deferred) that
    :func:`run_audited` leaves only after the completion record is written.
    """

    key_uri: str | None = None
    did: str | None = None
    fingerprint: str | None = None
    action: str = ""
    audit: AuditLog | None = None
    crash: CrashPoint = field(default_factory=CrashPoint)
    critical: ExitStack = field(default_factory=ExitStack)
    intended: bool = False
    credential_id: str | None = None  # credential ceremonies: the credential the record names
    credential_sha256: str | None = None

    def learn(self, info: KeyInfo) -> None:
        self.key_uri = info.uri or self.key_uri
        self.did = info.did
        self.fingerprint = info.fingerprint

    def intend(self, key_uri: str) -> None:
        """Record the intent to create the key ``key_uri`` names; defer signals from here on."""
        assert self.audit is not None  # run_audited sets it
        self.critical.enter_context(deferred_signals())
        self.intended = True
        self.key_uri = key_uri
        self.audit.append(self.action + INTENT_SUFFIX, outcome="ok", key_uri=key_uri)
        self.crash.reached("after-intent")

    def created(self) -> None:
        self.crash.reached("after-create")


@dataclass(frozen=True)
class Deps:
    backend_factory: Callable[[], KeyBackend]
    clock: Clock = field(default_factory=SystemClock)
    tracer_provider: trace.TracerProvider | None = None  # None: the global provider

    @functools.cached_property
    def tracer(self) -> trace.Tracer:
        return trace.get_tracer("broker.ceremony", tracer_provider=self.tracer_provider)

    @functools.cached_property
    def backend(self) -> KeyBackend:
        return self.backend_factory()


Body = Callable[[Deps, argparse.Namespace, Facts], Result]


# --- helpers ------------------------------------------------------------------------------------


def audit_log_path(args: argparse.Namespace) -> str:
    value: str | None = getattr(args, "audit_log", None)
    return value or os.environ.get(AUDIT_LOG_ENV) or DEFAULT_AUDIT_LOG


def _target(deps: Deps, args: argparse.Namespace, facts: Facts, *, need_label: bool) -> KeyTarget:
    text: str | None = args.key or os.environ.get(KEY_URI_ENV)
    if not text:
        raise ConfigError(f"no key URI: pass --key pkcs11:... or set {KEY_URI_ENV}")
    refuse_inline_pin(text)
    target = deps.backend.parse(text)
    facts.key_uri = target.uri
    if need_label and not target.label:
        raise InvalidKeyUri("the key URI names no object= (the key label)")
    return target


def _inventory(store: CeremonyStore) -> list[TokenKey]:
    keys = [TokenKey(SIGNING, i.label, i.key_id, i.did, i.fingerprint) for i in store.list()]
    keys += [TokenKey(SEALING, label, key_id) for label, key_id in store.list_sealing_keys()]
    return keys


def _orphan_uri(target: KeyTarget, key: TokenKey) -> str:
    uri = KeyRef(token=target.token, object=key.label, id=key.key_id).to_uri()
    return uri.replace(";type=private", "") if key.kind == SEALING else uri


def find_orphans(store: CeremonyStore, target: KeyTarget, args: argparse.Namespace) -> list[Orphan]:
    """The keys of the token the audit log (chain verified first) does not account for."""
    audited = AuditedKeys.from_records(verified_records(audit_log_path(args)))
    return audited.orphans(target.token, _inventory(store))


def _orphan_message(orphans: list[Orphan], target: KeyTarget) -> str:
    first = orphans[0]
    uri = _orphan_uri(target, first.key)
    more = f" ({len(orphans) - 1} more orphan key(s) in this token)" if len(orphans) > 1 else ""
    return (
        f"{first.describe()} in token {target.token!r}{more}; check it and record it "
        f"with 'broker keys adopt --key {uri}', or remove it with "
        f"'broker keys destroy --key {uri}'"
    )


def _refuse_orphans(orphans: list[Orphan], target: KeyTarget) -> None:
    if orphans:
        raise OrphanKey(_orphan_message(orphans, target))


def _warn_orphans(orphans: list[Orphan], target: KeyTarget) -> None:
    """Read-only commands name the orphans on stderr and go on (an operator diagnosing an
    interrupted ceremony needs ``list`` and ``show``)."""
    if orphans:
        sys.stderr.write(f"warning: orphan key: {_orphan_message(orphans, target)} [orphan_key]\n")


@contextmanager
def _store(
    deps: Deps,
    target: KeyTarget,
    args: argparse.Namespace,
    *,
    spare: bool = False,
    read_only: bool = False,
) -> Iterator[tuple[CeremonyStore, list[Orphan]]]:
    """Open the token and refuse to go on while it holds an orphan key.

    ``spare``: the orphan the URI names is let through (adopt and destroy act on it); the
    remaining orphans are returned. ``read_only``: nothing is refused; the orphans are named on
    stderr and returned.
    """
    store = deps.backend.open(target, pin_file=args.pin_file)
    try:
        orphans = find_orphans(store, target, args)
        if read_only:
            _warn_orphans(orphans, target)
            yield store, orphans
            return
        mine = [o for o in orphans if spare and o.key.label == target.label]
        _refuse_orphans([o for o in orphans if o not in mine], target)
        yield store, mine
    finally:
        store.close()


def _label(target: KeyTarget) -> str:
    assert target.label is not None  # _target(need_label=True) checked it
    return target.label


def _get(store: CeremonyStore, target: KeyTarget, facts: Facts) -> KeyInfo:
    info = store.get(_label(target))
    if target.key_id is not None and info.key_id != target.key_id:
        raise KeyNotFound("a key with this label exists but its id differs from the URI's id=")
    facts.learn(info)
    return info


def _new_id(target: KeyTarget) -> bytes:
    return target.key_id if target.key_id is not None else os.urandom(RANDOM_ID_BYTES)


def _read_key_file(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read the key file {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InvalidArgument(f"the key file {path} is too large to be a private key")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(
            f"the key file {path} is not text (expected PEM, JWK JSON or hex)"
        ) from None


# --- command bodies -----------------------------------------------------------------------------


def cmd_generate(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = _target(deps, args, facts, need_label=True)
    key_id = _new_id(target)
    with _store(deps, target, args) as (store, _):
        facts.intend(deps.backend.key_uri(target, key_id))
        info = store.generate(_label(target), key_id)
        facts.learn(info)
        facts.created()
    return output.key_document(info), output.key_text(info)


def cmd_import(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = _target(deps, args, facts, need_label=True)
    private_key = deps.backend.load_private_key(_read_key_file(args.from_file))
    key_id = _new_id(target)
    with _store(deps, target, args) as (store, _):
        facts.intend(deps.backend.key_uri(target, key_id))
        info = store.import_key(_label(target), key_id, private_key)
        facts.learn(info)
        facts.created()
    del private_key
    document = output.key_document(info)
    document["reminder"] = output.DESTROY_PLAINTEXT_REMINDER
    return document, output.key_text(info) + "\n" + output.DESTROY_PLAINTEXT_REMINDER + "\n"


def cmd_list(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = _target(deps, args, facts, need_label=False)
    with _store(deps, target, args, read_only=True) as (store, orphans):
        infos = store.list()
        sealing = store.list_sealing_keys()
    document = {
        "keys": [output.key_document(i) for i in infos],
        "sealing_keys": [{"label": label, "id": key_id.hex()} for label, key_id in sealing],
        "orphans": [
            {"label": o.key.label, "id": o.key.key_id.hex(), "why": o.why} for o in orphans
        ],
    }
    text = output.key_list_text(infos) + "".join(
        f"{label}\tid={key_id.hex()}\tAES-256 sealing key\n" for label, key_id in sealing
    )
    return document, text


def cmd_show(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = _target(deps, args, facts, need_label=True)
    with _store(deps, target, args, read_only=True) as (store, _):
        info = _get(store, target, facts)
    return output.key_document(info), output.key_text(info)


def cmd_tsl_entry(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = _target(deps, args, facts, need_label=True)
    with _store(deps, target, args) as (store, _):
        info = _get(store, target, facts)
    entry = tsl.build_entry(
        did=info.did,
        issuer=args.issuer,
        url=args.url,
        redirect_uris=args.redirect_uri,
        post_logout_uris=args.post_logout_uri or [],
        jwks_uri=args.jwks_uri,
    )
    document = tsl.wrapped(entry) if args.wrap else entry
    return document, tsl.render_yaml(entry, wrap=args.wrap)


def cmd_selftest(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = _target(deps, args, facts, need_label=True)
    with _store(deps, target, args) as (store, _):
        info = _get(store, target, facts)
        report = run_selftest(store.signer(info.label), info, clock=deps.clock)
    return output.selftest_document(report), output.selftest_text(report)


def _confirm(prompt: str, expected: str, what: str, nothing: str) -> None:
    """Ask the operator to type ``expected`` (the did, or a sealing key's id in hex)."""
    if sys.stdin.isatty():
        sys.stderr.write(prompt + f"Type its {what} to confirm: ")
        sys.stderr.flush()
    typed = sys.stdin.readline().strip()
    if typed != expected:
        raise ConfirmationMismatch(f"the {what} typed does not match the key's {what}; {nothing}")


def _confirm_destroy(key: TokenKey) -> None:
    if key.did is not None:
        prompt = f"This destroys key {key.label!r} ({key.did}) in the token for good.\n"
        _confirm(prompt, key.did, "did", "nothing was destroyed")
    else:
        prompt = (
            f"This destroys sealing key {key.label!r} (id {key.key_id.hex()}) in the token for "
            "good: every grant sealed under it becomes unreadable.\n"
        )
        _confirm(prompt, key.key_id.hex(), "id", "nothing was destroyed")


def _find_key(deps: Deps, store: CeremonyStore, target: KeyTarget, facts: Facts) -> TokenKey:
    """The signing key the URI names, or else the sealing key of that label."""
    label = _label(target)
    try:
        info = _get(store, target, facts)
    except KeyNotFound:
        for sealing_label, key_id in store.list_sealing_keys():
            if sealing_label == label and target.key_id in (None, key_id):
                facts.key_uri = deps.backend.sealing_key_uri(target, key_id)
                return TokenKey(SEALING, label, key_id)
        raise
    return TokenKey(SIGNING, info.label, info.key_id, info.did, info.fingerprint)


def _key_document(key: TokenKey, uri: str | None) -> dict[str, Any]:
    return {
        "label": key.label,
        "kind": key.kind,
        "id": key.key_id.hex(),
        "did": key.did,
        "fingerprint": key.fingerprint,
        "uri": uri,
    }


def _key_name(key: TokenKey) -> str:
    if key.did is not None:
        return f"key {key.label!r} ({key.did})"
    return f"sealing key {key.label!r} (id {key.key_id.hex()})"


def cmd_destroy(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = _target(deps, args, facts, need_label=True)
    with _store(deps, target, args, spare=True) as (store, _):
        key = _find_key(deps, store, target, facts)
        if not args.yes:
            _confirm_destroy(key)
        store.delete(key.label)
    document = {"destroyed": True, **_key_document(key, facts.key_uri)}
    return document, f"destroyed {_key_name(key)}\n"


def _confirm_adopt(key: TokenKey) -> None:
    if key.did is not None:
        prompt = (
            f"Key {key.label!r} is in the token without a completed audit record.\n"
            f"  did:         {key.did}\n  fingerprint: SHA256:{key.fingerprint}\n"
            "Adopt it only if it is the key your ceremony made. "
        )
        _confirm(prompt, key.did, "did", "nothing was recorded")
    else:
        prompt = (
            f"Sealing key {key.label!r} (id {key.key_id.hex()}) is in the token without a "
            "completed audit record.\nAdopt it only if it is the key your ceremony made. "
        )
        _confirm(prompt, key.key_id.hex(), "id", "nothing was recorded")


def cmd_adopt(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    """Record an orphan key (one the audit log does not account for) after confirmation."""
    target = _target(deps, args, facts, need_label=True)
    with _store(deps, target, args, spare=True) as (store, mine):
        key = _find_key(deps, store, target, facts)
        if not any(o.key == key for o in mine):
            raise InvalidArgument(
                f"{_key_name(key)} is not an orphan: the audit log already records it"
            )
        if not args.yes:
            _confirm_adopt(key)
    document = {"adopted": True, **_key_document(key, facts.key_uri)}
    return document, f"adopted {_key_name(key)}: the audit log now records it\n"


def cmd_generate_sealing_key(deps: Deps, args: argparse.Namespace, facts: Facts) -> Result:
    target = _target(deps, args, facts, need_label=True)
    key_id = _new_id(target)
    uri = deps.backend.sealing_key_uri(target, key_id)
    with _store(deps, target, args) as (store, _):
        facts.intend(uri)
        store.generate_sealing_key(_label(target), key_id)
        facts.created()
    document = {"label": target.label, "id": key_id.hex(), "type": "AES-256", "uri": uri}
    text = f"generated AES-256 sealing key {target.label!r} (id {key_id.hex()}) in the token\n"
    return document, text


def cmd_audit_verify(args: argparse.Namespace) -> int:
    result = verify_chain(args.log or audit_log_path(args))
    broken = (
        None
        if result.ok
        else AuditError(
            f"audit chain broken at record {result.first_bad_seq}: {result.reason}",
            reason="audit_chain_broken",
        )
    )
    document = output.verify_document(result)
    if broken is not None:  # one JSON document: the report carries the error member
        document.update(output.error_document(broken))
        output.mark_reported(broken)
    output.emit(sys.stdout, as_json=args.json, document=document, text=output.verify_text(result))
    if broken is not None:
        raise broken
    return 0


# --- the audited runner -------------------------------------------------------------------------


def run_audited(deps: Deps, action: str, body: Body, args: argparse.Namespace) -> int:
    """Run ``body`` and append exactly one audit record for it, on success and on failure.

    A creating body also appends ``<action>.intent`` before it creates the key; from there
    until the completion record is written SIGINT and SIGTERM are deferred (``facts.critical``).
    """
    audit = AuditLog(audit_log_path(args), operator=args.operator, clock=deps.clock)
    audit.check_writable()  # fail before the token is touched
    facts = Facts(action=action, audit=audit, crash=CrashPoint.from_env())
    with deps.tracer.start_as_current_span(f"ceremony.{action}") as span, facts.critical:
        span.set_attribute("ceremony.action", action)
        try:
            document, text = body(deps, args, facts)
        except BaseException as exc:
            if isinstance(exc, BrokerError):
                reason = exc.reason
            elif isinstance(exc, KeyboardInterrupt):
                reason = "interrupted"
            else:
                reason = "internal"
            span.set_attribute("error.reason", reason)
            span.set_attribute("outcome", "error")
            if facts.did:
                span.set_attribute("kid", facts.did)
            try:
                audit.append(
                    facts.action,
                    outcome="error",
                    key_uri=facts.key_uri,
                    did=facts.did,
                    fingerprint=facts.fingerprint,
                    error=reason,
                    credential_id=facts.credential_id,
                    credential_sha256=facts.credential_sha256,
                )
            except AuditError as audit_exc:
                raise AuditError(
                    f"{action} failed ({reason}) and its audit record could not be written: "
                    f"{audit_exc.message}"
                ) from exc
            raise
        if facts.did:
            span.set_attribute("kid", facts.did)
        span.set_attribute("outcome", "ok")
        try:
            audit.append(
                facts.action,  # a body may name what it did (credential import -> replace)
                outcome="ok",
                key_uri=facts.key_uri,
                did=facts.did,
                fingerprint=facts.fingerprint,
                credential_id=facts.credential_id,
                credential_sha256=facts.credential_sha256,
            )
        except AuditError as exc:
            span.set_attribute("error.reason", exc.reason)
            raise AuditError(
                f"{action} succeeded but its audit record could not be written: {exc.message}"
            ) from exc
        if facts.intended:
            facts.crash.reached("after-completion")
    output.emit(sys.stdout, as_json=args.json, document=document, text=text)
    return 0


def _pkcs11_backend() -> KeyBackend:
    # Imported when a keys command first needs the token, not when the CLI starts.
    from broker.ceremony.pkcs11_backend import Pkcs11Backend  # noqa: PLC0415

    return Pkcs11Backend()


# --- argparse registration ----------------------------------------------------------------------


class _RefusePinOnArgv(argparse.Action):
    """``--pin`` and friends exist only to say no, without repeating the value."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string}: a PIN never goes on the command line (it shows in ps and shell "
            "history); use pin-source=file: in the key URI or --pin-file"
        )


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument(
        "--pin",
        "--pin-value",
        "--so-pin",
        nargs="?",
        action=_RefusePinOnArgv,
        help=argparse.SUPPRESS,
    )
    common.add_argument(
        "--key",
        metavar="URI",
        help=f"RFC 7512 key URI, e.g. pkcs11:token=broker;object=client-2026;id=%%01"
        f"?module-path=...&pin-source=file:/run/secrets/pin (default: ${KEY_URI_ENV})",
    )
    common.add_argument(
        "--pin-file", metavar="FILE", help="file holding the user PIN (overrides pin-source)"
    )
    common.add_argument(
        "--audit-log",
        metavar="FILE",
        help=f"audit log (default: ${AUDIT_LOG_ENV} or ./{DEFAULT_AUDIT_LOG})",
    )
    common.add_argument("--operator", help="who runs the ceremony (default: $SUDO_USER or $USER)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    return common


_COMMANDS: tuple[tuple[str, str, str, Body], ...] = (
    ("generate", "keys.generate", "generate a P-256 key in the token", cmd_generate),
    ("import", "keys.import", "import a P-256 private key into the token", cmd_import),
    ("list", "keys.list", "list the keys in the token", cmd_list),
    ("show", "keys.show", "show a key: did, kid, JWK, fingerprint, custody", cmd_show),
    ("tsl-entry", "keys.tsl_entry", "print the DOME Trusted Services List entry", cmd_tsl_entry),
    ("selftest", "keys.selftest", "sign a challenge in the token and verify it", cmd_selftest),
    ("destroy", "keys.destroy", "destroy a key (asks to type its did)", cmd_destroy),
    (
        "adopt",
        "keys.adopt",
        "record a key found in the token without a completed audit record (asks to type its did)",
        cmd_adopt,
    ),
    (
        "generate-sealing-key",
        "keys.generate_sealing_key",
        "generate the AES-256 key that seals tokens at rest",
        cmd_generate_sealing_key,
    ),
)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    backend_factory: Callable[[], KeyBackend] | None = None,
    clock: Clock | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    rotation: RotationDeps | None = None,
) -> None:
    """Add the ``keys`` group to the ``broker`` command. The keyword arguments are for tests."""
    deps = Deps(
        backend_factory=backend_factory or _pkcs11_backend,
        clock=clock or SystemClock(),
        tracer_provider=tracer_provider,
    )
    keys = subparsers.add_parser(
        "keys", help="key ceremonies: generate, import, show, destroy, ..."
    )
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    common = _common_parser()
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, action, help_text, body in _COMMANDS:
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(
            handler=functools.partial(run_audited, deps, action, body), command=f"keys {name}"
        )
        parsers[name] = p
    parsers["import"].add_argument(
        "--from",
        dest="from_file",
        metavar="FILE",
        required=True,
        help="private key file: PEM, JWK JSON or a 32-byte hex scalar",
    )
    tsl_p = parsers["tsl-entry"]
    tsl_p.add_argument("--issuer", required=True, metavar="URL", help="the Verifier's issuer")
    tsl_p.add_argument("--url", required=True, metavar="URL", help="the broker's public URL")
    tsl_p.add_argument(
        "--redirect-uri", required=True, action="append", metavar="URL", help="repeatable"
    )
    tsl_p.add_argument("--post-logout-uri", action="append", metavar="URL", help="repeatable")
    tsl_p.add_argument(
        "--jwks-uri",
        metavar="URL",
        help="jwkSetUrl = the broker's own key set (e.g. https://broker.example.org"
        "/.well-known/jwks.json) instead of {issuer}/oidc/did/{did}",
    )
    tsl_p.add_argument(
        "--wrap",
        action="store_true",
        help="print the entry under 'clients:', as the trust-framework file lists it",
    )
    # Imported here: the credential commands build on this module's helpers.
    from broker.ceremony import credential_commands  # noqa: PLC0415

    credential_commands.register(sub, deps, common)
    from broker.ceremony import init_token_command  # noqa: PLC0415

    init_token_command.register(sub, deps)
    from broker.ceremony import rotate_commands  # noqa: PLC0415

    rotate_commands.register(sub, deps, common, rotation)
    for name in ("destroy", "adopt"):
        parsers[name].add_argument(
            "--yes", action="store_true", help="do not ask to type the did (for scripts)"
        )
    verify_p = sub.add_parser(
        "audit-verify",
        help="verify the audit log's hash chain",
        description="verify the audit log's hash chain; report the first broken record",
    )
    verify_p.add_argument("--log", metavar="FILE", help="audit log (default: --audit-log)")
    verify_p.add_argument("--audit-log", metavar="FILE", help=argparse.SUPPRESS)
    verify_p.add_argument("--json", action="store_true", help="print one JSON document")
    verify_p.set_defaults(handler=cmd_audit_verify, command="keys audit-verify")
