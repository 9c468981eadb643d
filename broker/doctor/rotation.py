"""``store.rotation``: where a client-key rotation stands (``broker keys rotate``).

The grant store records every identity of a rotation with its role (primary / added), state
(prepared / active / retiring / retired) and key URI. This check lists them, marks the one
``[key] uri`` names (by our did when the HSM checks read it, else by the key URI's token and
object), and judges:

- fail: ``[key] uri`` names a retired identity (its key is destroyed; serve refuses to start);
- warn: ``[key] uri`` names another identity than the store's active one (``rotate activate``
  ran and a replica still runs the old key, or the configuration was changed before
  activating), or a prepared identity waits longer than ``prepared_warn_days`` (registered at
  the Verifier, never activated nor retired);
- ok otherwise; a rotation in progress (a retiring identity still serving its grants) is said.

A store that cannot be opened is the ``store`` check's failure: this one is then skipped.
Everything printed is public (dids, key URIs without PIN).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from broker.clock import Clock
from broker.config import Settings
from broker.doctor.result import CheckResult, fail, ok, skip, warn
from broker.doctor.store import RefusingSealer
from broker.errors import BrokerError
from broker.keys.uri import parse_key_uri
from broker.tokens.stores.deployment import IdentityState, RecordedIdentity

NAME = "store.rotation"
DEFAULT_PREPARED_WARN_DAYS = 14.0
DAY = 86_400.0


async def check_rotation(
    settings: Settings,
    clock: Clock,
    *,
    pg_schema: str = "broker",
    did: str | None = None,
    prepared_warn_days: float = DEFAULT_PREPARED_WARN_DAYS,
) -> CheckResult:
    """``store.rotation``; ``did`` is our did:key when the HSM checks could read it."""
    try:
        recorded = await read_identities(settings, clock, pg_schema)
    except BrokerError as exc:
        return skip(NAME, f"the grant store could not be read ({exc.reason}): see 'store'")
    if recorded is None:
        return ok(NAME, "no grant store yet: no rotation recorded")
    return assess(
        recorded,
        configured_did=did,
        configured_uri=settings.key.uri,
        now=clock.now(),
        prepared_warn_days=prepared_warn_days,
    )


async def read_identities(
    settings: Settings, clock: Clock, pg_schema: str
) -> Sequence[RecordedIdentity] | None:
    """The store's identity record, opened without binding an identity; None when the SQLite
    file does not exist (serve creates it)."""
    s = settings.store
    if s.kind == "postgres":
        from broker.tokens.stores import postgres  # noqa: PLC0415 - the optional extra

        assert s.dsn is not None  # load_settings requires it
        pg = postgres.PostgresGrantStore(
            s.dsn, RefusingSealer(), clock, schema=pg_schema, identity=None, record_identity=False
        )
        try:
            await pg.open()
            return list(await pg.identities())
        finally:
            await pg.close()
    from broker.tokens.stores import sqlite  # noqa: PLC0415 - as the store check

    assert s.path is not None  # load_settings requires it
    if not os.path.exists(s.path):
        return None
    lite = await sqlite.SqliteGrantStore.connect(
        str(s.path), RefusingSealer(), clock, identity=None, record_identity=False
    )
    try:
        return list(await lite.identities())
    finally:
        await lite.close()


def _same_key(recorded_uri: str | None, configured_uri: str) -> bool:
    if recorded_uri is None:
        return False
    mine, theirs = parse_key_uri(configured_uri), parse_key_uri(recorded_uri)
    return (mine.token, mine.object) == (theirs.token, theirs.object) and (
        mine.id is None or theirs.id is None or mine.id == theirs.id
    )


def configured_identity(
    recorded: Sequence[RecordedIdentity], *, did: str | None, uri: str
) -> RecordedIdentity | None:
    """The recorded identity ``[key] uri`` names: by did when known, else by the key URI."""
    if did is not None:
        return next((r for r in recorded if r.identity.did == did), None)
    return next((r for r in recorded if _same_key(r.key_uri, uri)), None)


def _line(r: RecordedIdentity, configured: RecordedIdentity | None) -> str:
    mark = " <- [key] uri" if r is configured else ""
    return f"{r.state.value} {r.identity.did} ({r.role.value}; key {r.key_uri or 'unknown'}){mark}"


def assess(
    recorded: Sequence[RecordedIdentity],
    *,
    configured_did: str | None,
    configured_uri: str,
    now: float,
    prepared_warn_days: float,
) -> CheckResult:
    """The verdict over a store's identity record (pure; see the module docstring)."""
    if not recorded:
        return ok(NAME, "no deployment identity recorded yet: no rotation")
    mine = configured_identity(recorded, did=configured_did, uri=configured_uri)
    listing = "identities: " + "; ".join(_line(r, mine) for r in recorded)
    active = [r for r in recorded if r.state is IdentityState.ACTIVE]
    if mine is not None and mine.state is IdentityState.RETIRED:
        return fail(
            NAME,
            f"[key] uri names the retired identity {mine.identity.did} (its key was destroyed "
            f"by 'broker keys rotate retire'; serve refuses to start): set [key] uri to the "
            f"active key{_key_of(active)}. {listing}",
        )
    problems = []
    if mine is None and configured_did is None:
        problems.append(
            "[key] uri not matched to a recorded identity (our did is unknown and no recorded "
            "key URI names the same key)"
        )
    elif mine is None:
        problems.append(f"[key] uri's did {configured_did} is not recorded (see 'store')")
    elif mine.state is not IdentityState.ACTIVE:
        problems.append(
            f"[key] uri names the {mine.state.value} identity {mine.identity.did}, not the "
            f"store's active one{_did_of(active)}: "
            + (
                "run 'broker keys rotate activate' first"
                if mine.state is IdentityState.PREPARED
                else f"set [key] uri to{_key_of(active) or ' the active key'} and restart "
                "every replica"
            )
        )
    for r in recorded:
        age = (now - r.recorded_at) / DAY
        if r.state is IdentityState.PREPARED and age > prepared_warn_days:
            problems.append(
                f"identity {r.identity.did} has been prepared for {age:.0f} days (over "
                f"{prepared_warn_days:g}): register it at the Verifier and run 'broker keys "
                "rotate activate', or drop the rotation"
            )
    if problems:
        return warn(NAME, "; ".join(problems) + f". {listing}")
    retiring = [r for r in recorded if r.state is IdentityState.RETIRING]
    if retiring:
        return ok(
            NAME,
            f"rotation in progress: {len(retiring)} retiring identit"
            f"{'y' if len(retiring) == 1 else 'ies'} still refresh their grants until "
            f"'broker keys rotate retire'. {listing}",
        )
    if len(recorded) == 1:
        return ok(NAME, f"no rotation in progress. {listing}")
    return ok(NAME, listing)


def _did_of(active: Sequence[RecordedIdentity]) -> str:
    return f" ({active[0].identity.did})" if active else " (none is active)"


def _key_of(active: Sequence[RecordedIdentity]) -> str:
    return f" {active[0].key_uri}" if active and active[0].key_uri else ""
