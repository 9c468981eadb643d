"""Ceremonies killed at every step leave no unaccounted key (issue 8, section 7).

The installed ``broker`` script runs in a subprocess against a SoftHSM token of this module's
own. The test-only hook ``BROKER_TEST_ONLY_CEREMONY_FAULT`` makes the ceremony SIGKILL (or
SIGSTOP) itself at a named step: after the intent record, after the key is created, after the
completion record. The next run must find either a clean state or an orphan it names, ``adopt``
or ``destroy`` must recover, and the audit chain must verify.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.ceremony.faults import FAULT_ENV
from broker.keys.didkey import did_from_public_key
from tests.cli.test_ceremony_subprocess import BROKER, Token, own_token

pytestmark = pytest.mark.softhsm

CEREMONIES = ("generate", "import", "generate-sealing-key")
STOPPED_WAIT = 120.0  # seconds; generous: the machine is shared


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    with own_token(tmp_path_factory, "crash") as tok:
        yield tok


class Ceremony:
    """One creating ceremony on a fresh label: how to run it, and what it creates."""

    def __init__(self, token: Token, kind: str, tmp_path: Path) -> None:
        self.token = token
        self.kind = kind
        self.label = f"{kind[:4]}-{secrets.token_hex(3)}"
        self.key = token.uri(self.label).replace(
            f"object={self.label}", f"object={self.label};id=%A1"
        )
        self.argv: list[str] = [kind]
        self.did: str | None = None
        if kind == "import":
            private = ec.generate_private_key(ec.SECP256R1())
            pem = tmp_path / "key.pem"
            pem.write_bytes(
                private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            self.argv += ["--from", str(pem)]
            self.did = did_from_public_key(private.public_key())

    def run(self, fault: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {FAULT_ENV: fault} if fault else None
        return self.token.run(*self.argv, key=self.key, extra_env=extra)

    def confirmation(self, orphan_line: str) -> str:
        """What the operator types to adopt or destroy: the did, or a sealing key's id."""
        if self.kind == "generate-sealing-key":
            return "a1"
        found = re.search(r"\((did:key:z[1-9A-HJ-NP-Za-km-z]+)\)", orphan_line)
        assert found, orphan_line
        assert self.did in (None, found.group(1))  # import: the did of the key file
        return found.group(1)

    def in_token(self) -> bool:
        listed = self.token.run("list", "--json", key=self.token.uri(None))
        assert listed.returncode == 0, listed.stderr
        group = "sealing_keys" if self.kind == "generate-sealing-key" else "keys"
        return self.label in [k["label"] for k in json.loads(listed.stdout)[group]]

    def records(self) -> list[tuple[str, str]]:
        lines = self.token.audit.read_text().splitlines()
        return [
            (r["action"], r["outcome"])
            for r in map(json.loads, lines)
            if r["key_uri"] and f"object={self.label};" in r["key_uri"]
        ]


def _chain_ok(token: Token) -> None:
    verify = token.run("audit-verify", "--log", str(token.audit), "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True, verify.stdout


def _orphan_line(token: Token, c: Ceremony) -> str:
    """Every keys command names the orphan and both ways out in one line: the read-only ones
    (list, show) as a warning and go on, the others refuse."""
    line = ""
    commands = [(["list"], token.uri(None), False)]
    if c.kind != "generate-sealing-key":  # show displays signing keys only
        commands.append((["show"], token.uri(c.label), False))
    commands.append((["generate"], token.uri("another-" + secrets.token_hex(2)), True))
    for argv, key, refused in commands:
        proc = token.run(*argv, key=key)
        if refused:
            assert proc.returncode == 1 and proc.stdout == "", proc.stderr
        else:
            assert proc.returncode == 0 and proc.stdout, proc.stderr
            assert proc.stderr.startswith("warning: orphan key: ")
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        line = proc.stderr
        assert "[orphan_key]" in line and f"'{c.label}'" in line
        assert f"broker keys adopt --key pkcs11:token=crash;object={c.label};id=%A1" in line
        assert "broker keys destroy --key" in line
        assert "orphan key: orphan key" not in line
    listed = token.run("list", "--json", key=token.uri(None))
    assert [o["label"] for o in json.loads(listed.stdout)["orphans"]] == [c.label]
    return line


@pytest.mark.parametrize("kind", CEREMONIES)
def test_killed_after_intent_leaves_a_clean_state(token: Token, tmp_path: Path, kind: str) -> None:
    c = Ceremony(token, kind, tmp_path)
    killed = c.run("kill:after-intent")
    assert killed.returncode == -signal.SIGKILL
    assert c.records() == [(f"keys.{kind.replace('-', '_')}.intent", "ok")]
    assert not c.in_token()  # the intent alone: no key, nothing to adopt
    rerun = c.run()
    assert rerun.returncode == 0, rerun.stderr
    assert token.run("destroy", "--yes", key=c.key).returncode == 0
    _chain_ok(token)


@pytest.mark.parametrize("recovery", ["adopt", "destroy"])
@pytest.mark.parametrize("kind", CEREMONIES)
def test_killed_after_create_is_an_orphan_until_adopted_or_destroyed(
    token: Token, tmp_path: Path, kind: str, recovery: str
) -> None:
    c = Ceremony(token, kind, tmp_path)
    killed = c.run("kill:after-create")
    assert killed.returncode == -signal.SIGKILL
    action = f"keys.{kind.replace('-', '_')}"
    assert c.records() == [(f"{action}.intent", "ok")]  # the key exists; its intent is recorded
    line = _orphan_line(token, c)
    assert "intent recorded but the ceremony never completed" in line
    assert c.run().returncode == 1  # the rerun does not continue past an orphan
    answer = c.confirmation(line)

    wrong = token.run(recovery, key=c.key, stdin="not-it\n")
    assert wrong.returncode == 1 and "[confirmation_mismatch]" in wrong.stderr
    done = token.run(recovery, "--json", key=c.key, stdin=answer + "\n")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["label"] == c.label
    assert c.records()[-1] == (f"keys.{recovery}", "ok")

    listed = token.run("list", key=token.uri(None))
    assert listed.returncode == 0, listed.stderr  # no orphan any more
    if recovery == "adopt":
        assert c.in_token()
        assert token.run("adopt", "--yes", key=c.key).returncode == 2  # not an orphan now
    else:
        assert not c.in_token()
        assert c.run().returncode == 0  # the ceremony can simply be run again
    _chain_ok(token)
    if c.in_token():
        assert token.run("destroy", "--yes", key=c.key).returncode == 0


@pytest.mark.parametrize("kind", CEREMONIES)
def test_killed_after_completion_is_clean(token: Token, tmp_path: Path, kind: str) -> None:
    c = Ceremony(token, kind, tmp_path)
    killed = c.run("kill:after-completion")
    assert killed.returncode == -signal.SIGKILL and killed.stdout == ""
    action = f"keys.{kind.replace('-', '_')}"
    assert c.records() == [(f"{action}.intent", "ok"), (action, "ok")]
    assert c.in_token()
    assert token.run("list", key=token.uri(None)).returncode == 0
    _chain_ok(token)
    assert token.run("destroy", "--yes", key=c.key).returncode == 0


def _wait_stopped(proc: subprocess.Popen[bytes]) -> None:
    """Until the ceremony has frozen itself at its stop point (state T); fail if it exits."""
    deadline = time.monotonic() + STOPPED_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the ceremony exited before its stop point: {err.decode()}")
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    raise AssertionError(f"the ceremony did not reach its stop point in {STOPPED_WAIT} s")


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)]
)
@pytest.mark.parametrize("kind", CEREMONIES)
def test_signal_in_the_critical_section_is_deferred_until_the_record_is_written(
    token: Token, tmp_path: Path, kind: str, sig: signal.Signals, status: int
) -> None:
    """Ctrl-C (or SIGTERM) after the key is created: the process still stops, but only once
    the completion record is written; the key and its record both exist."""
    c = Ceremony(token, kind, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update({"SOFTHSM2_CONF": str(token.conf), FAULT_ENV: "stop:after-create"})
    cmd = [str(BROKER), "keys", *c.argv, "--key", c.key, "--audit-log", str(token.audit)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        _wait_stopped(proc)
        os.kill(proc.pid, sig)  # pending while stopped, delivered on SIGCONT
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    token.outputs += [out.decode(), err.decode()]
    assert proc.returncode == status, err
    action = f"keys.{kind.replace('-', '_')}"
    assert c.records() == [(f"{action}.intent", "ok"), (action, "ok")]
    assert c.in_token()
    assert token.run("list", key=token.uri(None)).returncode == 0  # no orphan
    _chain_ok(token)
    assert token.run("destroy", "--yes", key=c.key).returncode == 0


def test_a_malformed_fault_value_is_refused_before_the_token(token: Token) -> None:
    label = "bad-fault-" + secrets.token_hex(2)
    proc = token.run("generate", key=token.uri(label), extra_env={FAULT_ENV: "rm:-rf"})
    assert proc.returncode == 2 and f"{FAULT_ENV} (test only)" in proc.stderr
    listed = token.run("list", "--json", key=token.uri(None))
    assert label not in listed.stdout
