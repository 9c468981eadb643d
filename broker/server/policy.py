"""Which caller may call which method on which grant: a TOML policy file, reloaded live.

File format::

    [deny]                                  # checked first (TEST-CATALOGUE E04)
    identities = ["spiffe://corp/retired"]
    serials = ["0x1f2e", "4711"]            # certificate serials, hex (0x...) or decimal

    [identities."spiffe://corp/billing"]    # a workload SPIFFE ID, or "cn:<CN>" (below)
    methods = ["GetAccessToken", "WatchAccessToken"]   # or ["*"]
    grants = ["g-1"]                        # grant ids, or ["*"] for every grant
    labels = ["crm"]                        # grants with these labels

Every identity (rule names and ``deny.identities``) must be a valid workload SPIFFE ID or
``cn:<CN>`` (:func:`broker.server.spiffe_id.check_policy_name`, the grammar the caller's
certificate is checked with): a malformed one is a :class:`ConfigError` naming its line and the
reason. ``cn:`` rules only match when the server reads CN identities (``[grpc] cn_identities``);
otherwise they never match anyone.

Everything not allowed is denied. Denials are logged with a reason code (``denylisted``,
``not_in_policy``, ``method_not_allowed``, ``label_not_allowed``, ``grant_not_allowed``), the
identity and the method; the :class:`PermissionDenied` raised carries the same reason. The
:class:`PolicyHolder` re-reads the file on SIGHUP and when its mtime/size/inode changes; a
broken new file keeps the old policy and logs an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from broker.errors import ConfigError, MalformedIdentity, PermissionDenied
from broker.server.identity import CallerIdentity
from broker.server.spiffe_id import check_policy_name

log = logging.getLogger("broker.server.policy")

METHODS = frozenset(
    {
        "StartAuthorization",
        "CompleteAuthorization",
        "GetLogin",
        "GetAccessToken",
        "WatchAccessToken",
        "GetGrant",
        "ListGrants",
        "RevokeGrant",
    }
)
WILDCARD = "*"


@dataclass(frozen=True)
class Rule:
    """What one identity may do."""

    methods: frozenset[str]
    grant_ids: frozenset[str]
    labels: frozenset[str]

    def allows_method(self, method: str) -> bool:
        return WILDCARD in self.methods or method in self.methods

    @property
    def all_grants(self) -> bool:
        return WILDCARD in self.grant_ids

    def allows_grant(self, grant_id: str, label: str | None) -> bool:
        if self.all_grants or grant_id in self.grant_ids:
            return True
        return label is not None and label in self.labels


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, Rule]
    denied_identities: frozenset[str] = frozenset()
    denied_serials: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Parse a policy document; raise :class:`ConfigError` naming the bad part."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"policy is not valid TOML: {exc}") from exc
        _only_keys(doc, {"deny", "identities"}, "policy")
        deny = doc.get("deny", {})
        if not isinstance(deny, dict):
            raise ConfigError("policy: [deny] must be a table")
        _only_keys(deny, {"identities", "serials"}, "[deny]")
        denied_ids = frozenset(_str_list(deny.get("identities", []), "deny.identities"))
        for name in sorted(denied_ids):
            _check_identity(name, text, "deny.identities")
        serials = frozenset(_serial(s) for s in _list(deny.get("serials", []), "deny.serials"))
        idents = doc.get("identities", {})
        if not isinstance(idents, dict):
            raise ConfigError("policy: [identities] must be a table")
        rules: dict[str, Rule] = {}
        for name, body in idents.items():
            where = f"identities.{name!r}"
            if not name:
                raise ConfigError("policy: an identity name is empty")
            _check_identity(name, text, "[identities]")
            if not isinstance(body, dict):
                raise ConfigError(f"policy: {where} must be a table")
            _only_keys(body, {"methods", "grants", "labels"}, where)
            methods = frozenset(_str_list(body.get("methods", []), f"{where}.methods"))
            unknown = methods - METHODS - {WILDCARD}
            if unknown:
                raise ConfigError(f"policy: {where}.methods names unknown {sorted(unknown)}")
            rules[name] = Rule(
                methods=methods,
                grant_ids=frozenset(_str_list(body.get("grants", []), f"{where}.grants")),
                labels=frozenset(_str_list(body.get("labels", []), f"{where}.labels")),
            )
        return cls(rules=rules, denied_identities=denied_ids, denied_serials=serials)

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"policy file unreadable ({type(exc).__name__})") from exc
        return cls.parse(text)

    def authorize_method(self, caller: CallerIdentity, method: str) -> Rule:
        """The caller's rule if it may call ``method``; else log and raise PermissionDenied."""
        if caller.name in self.denied_identities or (
            caller.serial is not None and caller.serial in self.denied_serials
        ):
            _deny(caller, method, "denylisted")
        rule = self.rules.get(caller.name)
        if rule is None:
            _deny(caller, method, "not_in_policy")
        if not rule.allows_method(method):
            _deny(caller, method, "method_not_allowed")
        return rule

    @staticmethod
    def authorize_label(caller: CallerIdentity, method: str, rule: Rule, label: str) -> None:
        """May the caller create (log in) a grant with this label?"""
        if not (rule.all_grants or label in rule.labels):
            _deny(caller, method, "label_not_allowed")

    @staticmethod
    def authorize_grant(
        caller: CallerIdentity, method: str, rule: Rule, grant_id: str, label: str | None
    ) -> None:
        if not rule.allows_grant(grant_id, label):
            _deny(caller, method, "grant_not_allowed", grant_id=grant_id)


def _deny(
    caller: CallerIdentity, method: str, reason: str, *, grant_id: str | None = None
) -> NoReturn:
    log.warning(
        "permission denied: reason=%s identity=%s method=%s grant_id=%s",
        reason,
        caller.name,
        method,
        grant_id,
    )
    raise PermissionDenied("permission denied", reason=reason)


def _check_identity(name: str, text: str, where: str) -> None:
    """Refuse a malformed identity, naming the first line that spells it and why."""
    try:
        check_policy_name(name)
    except MalformedIdentity as exc:
        spellings = (f'"{name}"', f"'{name}'", f"identities.{name}]")
        line = next(
            (n for n, ln in enumerate(text.splitlines(), 1) if any(s in ln for s in spellings)),
            None,
        )
        at = f"line {line}, " if line is not None else ""
        raise ConfigError(
            f"policy: {at}{where}: malformed identity {name[:128]!r}: {exc.message}"
        ) from exc


def _only_keys(table: Mapping[str, object], allowed: set[str], where: str) -> None:
    extra = set(table) - allowed
    if extra:
        raise ConfigError(f"policy: {where} has unknown keys {sorted(extra)}")


def _list(value: object, where: str) -> list[object]:
    if not isinstance(value, list):
        raise ConfigError(f"policy: {where} must be a list")
    return value


def _str_list(value: object, where: str) -> list[str]:
    items = _list(value, where)
    if not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"policy: {where} must hold non-empty strings")
    return [str(v) for v in items]


def _serial(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value, 16) if value.lower().startswith("0x") else int(value, 10)
    raise ConfigError("policy: deny.serials must hold non-negative integers or 0x-hex strings")


class PolicyHolder:
    """The live policy of a running server.

    ``current`` is replaced atomically; ``generation`` counts successful loads. ``start`` installs
    the SIGHUP handler and the mtime poll on the running loop; ``stop`` removes them.
    """

    def __init__(self, path: Path, *, poll_interval: float = 2.0) -> None:
        self._path = path
        self._poll_interval = poll_interval
        self._current = Policy.load(path)
        self._stamp = self._stat()
        self.generation = 1
        self.failures = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def current(self) -> Policy:
        return self._current

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self) -> bool:
        """Re-read the file now. True if the new policy is in force; on error keep the old."""
        self._stamp = self._stat()
        try:
            policy = Policy.load(self._path)
        except ConfigError as exc:
            self.failures += 1
            log.error("policy reload failed, keeping the previous policy: %s", exc.message)
            return False
        self._current = policy
        self.generation += 1
        log.info("policy reloaded (generation %d)", self.generation)
        return True

    def poll(self) -> bool:
        """Reload if the file changed since the last attempt. True if a reload was attempted."""
        if self._stat() == self._stamp:
            return False
        self.reload()
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            self.poll()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._task = loop.create_task(self._watch(), name="policy-watch")

    async def stop(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.remove_signal_handler(signal.SIGHUP)
            self._loop = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
