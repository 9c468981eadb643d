"""Policy parsing, denylist and live reload (file change, SIGHUP, broken file)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import grpc
import pytest

from broker.errors import ConfigError, PermissionDenied
from broker.server.gen.broker.v1 import broker_pb2 as pb
from broker.server.identity import CallerIdentity
from broker.server.policy import Policy, PolicyHolder
from tests.server.conftest import APP, Harness

STRANGER = "spiffe://corp.example/stranger"


def _caller(name: str, serial: int | None = None) -> CallerIdentity:
    return CallerIdentity(name, "uri_san", serial)


async def _until(predicate: object, what: str) -> None:
    """Wait (bounded, not timed) until predicate() is true."""

    async def spin() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(spin(), timeout=20)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")


def test_policy_allows_listed_method_and_grant_only() -> None:
    policy = Policy.parse(
        '[identities."a"]\nmethods = ["GetAccessToken"]\ngrants = ["g-1"]\nlabels = ["crm"]\n'
    )
    rule = policy.authorize_method(_caller("a"), "GetAccessToken")
    assert rule.allows_grant("g-1", None)
    assert rule.allows_grant("g-9", "crm")
    assert not rule.allows_grant("g-9", "erp")
    with pytest.raises(PermissionDenied):
        policy.authorize_method(_caller("a"), "RevokeGrant")
    with pytest.raises(PermissionDenied):
        policy.authorize_method(_caller("b"), "GetAccessToken")


def test_e04_denylist_by_identity_and_serial_wins_over_rules(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Policy.parse(
        '[deny]\nidentities = ["a"]\nserials = ["0x10", "17", 18]\n'
        '[identities."a"]\nmethods = ["*"]\ngrants = ["*"]\n'
        '[identities."b"]\nmethods = ["*"]\ngrants = ["*"]\n'
    )
    assert policy.denied_serials == {16, 17, 18}
    with (
        caplog.at_level(logging.WARNING, logger="broker.server.policy"),
        pytest.raises(PermissionDenied) as info,
    ):
        policy.authorize_method(_caller("a"), "GetGrant")
    assert info.value.message == "permission denied"
    assert "identity=a method=GetGrant why=denylisted" in caplog.text
    with pytest.raises(PermissionDenied):
        policy.authorize_method(_caller("b", serial=17), "GetGrant")
    assert policy.authorize_method(_caller("b", serial=19), "GetGrant").all_grants


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not toml [", "not valid TOML"),
        ("[other]\n", "unknown keys ['other']"),
        ('[identities."a"]\nmethods = ["Steal"]\n', "unknown ['Steal']"),
        ('[identities."a"]\nmethods = "GetGrant"\n', "must be a list"),
        ('[identities."a"]\ngrants = [""]\n', "non-empty strings"),
        ('[identities."a"]\nroles = ["x"]\n', "unknown keys ['roles']"),
        ('[deny]\nserials = ["0xZZ"]\n', "deny.serials"),
        ("[deny]\nserials = [-1]\n", "deny.serials"),
        ("identities = 3\n", "must be a table"),
    ],
)
def test_broken_policy_is_a_config_error(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Policy.parse(text)
    assert fragment in info.value.message


async def test_policy_reloads_on_file_change_without_restart(harness: Harness) -> None:
    s = harness.stub_for(STRANGER)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    holder = harness.running.policy
    gen = holder.generation
    harness.policy_path.write_text(
        harness.policy_path.read_text()
        + f'\n[identities."{STRANGER}"]\nmethods = ["GetAccessToken"]\ngrants = ["g-1"]\n'
    )
    await _until(lambda: holder.generation > gen, "policy reloaded by mtime poll")
    reply = await s.GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    assert reply.token.grant_id == "g-1"


async def test_policy_reloads_on_sighup(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[identities."a"]\nmethods = ["GetGrant"]\n')
    holder = PolicyHolder(path, poll_interval=3600)  # the poll never fires during the test
    holder.start()
    try:
        path.write_text('[identities."b"]\nmethods = ["GetGrant"]\n')
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: holder.generation == 2, "policy reloaded by SIGHUP")
        assert set(holder.current.rules) == {"b"}
    finally:
        await holder.stop()


async def test_broken_new_policy_keeps_the_old_one_and_logs(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    holder = harness.running.policy
    before = holder.current
    with caplog.at_level(logging.ERROR, logger="broker.server.policy"):
        harness.policy_path.write_text("this is [ not toml")
        await _until(lambda: holder.failures == 1, "broken policy detected")
    assert holder.current is before
    assert "policy reload failed, keeping the previous policy" in caplog.text
    reply = await harness.stub_for(APP).GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    assert reply.token.grant_id == "g-1"


def test_policy_holder_refuses_to_start_on_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[identities\n")
    with pytest.raises(ConfigError):
        PolicyHolder(path)
    with pytest.raises(ConfigError) as info:
        PolicyHolder(tmp_path / "missing.toml")
    assert str(tmp_path) not in info.value.message
