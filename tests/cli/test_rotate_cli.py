"""``broker keys rotate prepare|status|activate|retire`` (issue 10 section 4) in-process through
``main(argv)``: the soft key backend (its keys kept across invocations, a sealer for the grant
store), a real SQLite grant store and a configuration file as serve reads it; the AS answers
the pre-flight through an httpx MockTransport (401 invalid_client for an unregistered client,
400 invalid_grant for the bogus refresh token of a registered one)."""

from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from broker.app.oauth import client_config
from broker.audit import verified_records
from broker.cli import main
from broker.cli.keys import register as register_keys
from broker.cli.keys_rotate_ledger import RotationDeps
from broker.cli.rotation_wiring import open_ledger
from broker.config import Settings
from broker.errors import KeyNotFound
from broker.keys.api import Sealer
from broker.keys.soft import SoftSealer
from broker.tokens.model import Grant, GrantStatus
from broker.tokens.stores.deployment import DeploymentIdentity
from broker.tokens.stores.sqlite import SqliteGrantStore
from tests.cli.soft_backend import SoftBackend, SoftCeremonyStore
from tests.clock import FakeClock
from tests.doctor.helpers import ISSUER, FakeVerifier, make_deployment
from tests.tokens.stores.helpers import make_grant

PIN = "1234"


class SealingSoftStore(SoftCeremonyStore):
    """The soft token plus the AES key that seals the grant store (one per token)."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.sealers: dict[str, SoftSealer] = {}

    def sealer(self, label: str) -> Sealer:
        if label not in self.sealing:
            raise KeyNotFound(f"no sealing key {label!r}")
        return self.sealers.setdefault(label, SoftSealer(key_label=label))


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.clock = FakeClock()
        self.pin_file = tmp_path / "pin"
        self.pin_file.write_text(PIN)
        self.pin_file.chmod(0o600)
        self.backend = SoftBackend("soft", PIN)
        self.token = SealingSoftStore("soft")
        self.backend.store = self.token
        self.audit = tmp_path / "audit.jsonl"
        self.registered: set[str] = set()
        self.token_requests: list[dict[str, list[str]]] = []
        self.verifier = FakeVerifier(self.clock)
        self.deployment = make_deployment(
            tmp_path,
            now=self.clock.now(),
            token_label="soft",
            key_label="client-a",
            sealing_label="seal",
            pin_file=self.pin_file,
        )
        self.config = self.deployment.write()
        deps = RotationDeps(
            open_store=open_ledger, http_factory=self.http, client_config=client_config
        )
        self.groups = [
            functools.partial(
                register_keys,
                backend_factory=lambda: self.backend,
                clock=self.clock,
                rotation=deps,
            )
        ]

    def uri(self, label: str) -> str:
        return f"pkcs11:token=soft;object={label}?pin-source=file:{self.pin_file}"

    def http(self, _settings: Settings) -> httpx.AsyncClient:
        def handle(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/oidc/token":
                form = parse_qs(request.content.decode())
                self.token_requests.append(form)
                if form["client_id"][0] not in self.registered:
                    return httpx.Response(401, json={"error": "invalid_client"})
                return httpx.Response(400, json={"error": "invalid_grant"})
            return self.verifier.handle(request)

        return httpx.AsyncClient(transport=httpx.MockTransport(handle))

    def run(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
        code = main(
            ["keys", *argv, "--audit-log", str(self.audit), "--json", "--operator", "test"],
            groups=self.groups,
        )
        out, err = capsys.readouterr()
        return code, json.loads(out) if code == 0 else out, err

    def rotate(self, capsys: pytest.CaptureFixture[str], step: str, *argv: str) -> Any:
        return self.run(capsys, "rotate", step, "--config", str(self.config), *argv)

    async def store(self) -> SqliteGrantStore:
        sealer = self.token.sealer("seal")
        return await SqliteGrantStore.connect(str(self.tmp / "grants.db"), sealer, self.clock)


def test_rotation_ceremony_prepare_status_activate_retire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = Env(tmp_path)
    assert env.run(capsys, "generate", "--key", env.uri("client-a"))[0] == 0
    assert env.run(capsys, "generate-sealing-key", "--key", env.uri("seal"))[0] == 0
    did_a = env.backend.store.get("client-a").did
    old = DeploymentIdentity(ISSUER, did_a, did_a)

    async def as_serve_leaves_it() -> None:  # bound to the old key, one user grant of it
        sealer = env.token.sealer("seal")
        store = await SqliteGrantStore.connect(
            str(tmp_path / "grants.db"), sealer, env.clock, identity=old
        )
        await store.create(make_grant("old-user", issuer=ISSUER, client_id=did_a))
        await store.close()

    asyncio.run(as_serve_leaves_it())

    code, prepared, err = env.rotate(capsys, "prepare", "--key", env.uri("client-b"))
    assert (code, err) == (0, "")
    did_b = prepared["prepared"]
    assert did_b == env.backend.store.get("client-b").did != did_a
    assert prepared["tsl_entry"]["clientId"] == did_b
    assert prepared["tsl_entry"]["jwkSetUrl"].endswith("/oidc/did/" + did_b)
    prep = {i["did"]: (i["state"], i["key_uri"]) for i in prepared["identities"]}
    assert prep[did_a][0] == "active" and "object=client-a" in prep[did_a][1]
    assert prep[did_b][0] == "prepared" and "object=client-b" in prep[did_b][1]
    assert all("?" not in i["key_uri"] for i in prepared["identities"])  # no PIN source
    code, _, err = env.rotate(capsys, "prepare", "--key", env.uri("client-c"))
    assert code == 2 and "already prepared" in err  # one rotation at a time

    code, status, _ = env.rotate(capsys, "status")
    assert code == 0
    assert status["preflight"]["result"] == "unknown_client"  # not in the TSL yet
    assert env.token_requests[-1]["client_id"] == [did_b]
    assert status["grants"] == [
        {"client_id": did_a, "kind": "user", "status": "active", "grants": 1}
    ]
    env.registered.add(did_b)  # the Verifier restarted with the new TSL entry
    assert env.rotate(capsys, "status")[1]["preflight"]["result"] == "client_known"

    code, activated, _ = env.rotate(capsys, "activate")
    assert code == 0 and activated["activated"] == did_b
    states = {i["did"]: i["state"] for i in activated["identities"]}
    assert states == {did_a: "retiring", did_b: "active"}

    code, _, err = env.rotate(capsys, "retire", "--yes")
    assert code == 2 and "still names the retiring key" in err
    env.deployment.sections["key"]["uri"] = env.uri("client-b")
    env.config = env.deployment.write()  # the operator switched [key] uri and restarted
    code, _, err = env.rotate(capsys, "retire", "--yes")
    assert code == 2 and "1 active grant(s) still belong to" in err
    env.backend.store.get("client-a")  # nothing destroyed

    code, retired, _ = env.rotate(capsys, "retire", "--yes", "--force")
    assert code == 0 and retired["grants_ended"] == ["old-user"] and retired["key_destroyed"]
    with pytest.raises(KeyNotFound):
        env.backend.store.get("client-a")

    async def read() -> tuple[Grant, dict[str, str]]:
        store = await env.store()
        try:
            found = await store.get("old-user")
            return found, {r.identity.did: r.state.value for r in await store.identities()}
        finally:
            await store.close()

    grant, states = asyncio.run(read())
    assert grant.status is GrantStatus.REAUTHORIZATION_REQUIRED
    assert grant.last_error == "key_retired"
    assert states == {did_a: "retired", did_b: "active"}

    actions = [(r["action"], r["outcome"]) for r in verified_records(env.audit)]
    assert ("keys.rotate.prepare.intent", "ok") in actions
    assert ("keys.rotate.prepare", "ok") in actions
    assert ("keys.rotate.activate", "ok") in actions
    assert actions[-1] == ("keys.rotate.retire", "ok")
    assert actions.count(("keys.rotate.retire", "error")) == 2
    # the new key is accounted for: the next ceremony finds no orphan
    assert env.run(capsys, "list", "--key", env.uri("client-b"))[1]["orphans"] == []
