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
A = "spiffe://corp.example/a"
B = "spiffe://corp.example/b"


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
        f'[identities."{A}"]\nmethods = ["GetAccessToken"]\ngrants = ["g-1"]\nlabels = ["crm"]\n'
    )
    rule = policy.authorize_method(_caller(A), "GetAccessToken")
    assert rule.allows_grant("g-1", None)
    assert rule.allows_grant("g-9", "crm")
    assert not rule.allows_grant("g-9", "erp")
    with pytest.raises(PermissionDenied) as info:
        policy.authorize_method(_caller(A), "RevokeGrant")
    assert info.value.reason == "method_not_allowed"
    with pytest.raises(PermissionDenied) as info:
        policy.authorize_method(_caller(B), "GetAccessToken")
    assert info.value.reason == "not_in_policy"


def test_e04_denylist_by_identity_and_serial_wins_over_rules(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Policy.parse(
        f'[deny]\nidentities = ["{A}"]\nserials = ["0x10", "17", 18]\n'
        f'[identities."{A}"]\nmethods = ["*"]\ngrants = ["*"]\n'
        f'[identities."{B}"]\nmethods = ["*"]\ngrants = ["*"]\n'
    )
    assert policy.denied_serials == {16, 17, 18}
    with (
        caplog.at_level(logging.WARNING, logger="broker.server.policy"),
        pytest.raises(PermissionDenied) as info,
    ):
        policy.authorize_method(_caller(A), "GetGrant")
    assert info.value.message == "permission denied"
    assert f"reason=denylisted identity={A} method=GetGrant" in caplog.text
    with pytest.raises(PermissionDenied):
        policy.authorize_method(_caller(B, serial=17), "GetGrant")
    assert policy.authorize_method(_caller(B, serial=19), "GetGrant").all_grants


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not toml [", "not valid TOML"),
        ("[other]\n", "unknown keys ['other']"),
        (f'[identities."{A}"]\nmethods = ["Steal"]\n', "unknown ['Steal']"),
        (f'[identities."{A}"]\nmethods = "GetGrant"\n', "must be a list"),
        (f'[identities."{A}"]\ngrants = [""]\n', "non-empty strings"),
        (f'[identities."{A}"]\nroles = ["x"]\n', "unknown keys ['roles']"),
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
    path.write_text(f'[identities."{A}"]\nmethods = ["GetGrant"]\n')
    holder = PolicyHolder(path, poll_interval=3600)  # the poll never fires during the test
    holder.start()
    try:
        path.write_text(f'[identities."{B}"]\nmethods = ["GetGrant"]\n')
        os.kill(os.getpid(), signal.SIGHUP)
        await _until(lambda: holder.generation == 2, "policy reloaded by SIGHUP")
        assert set(holder.current.rules) == {B}
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


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # the E05 bypasses, as policy entries
        ('[identities."cn-only-client"]\nmethods = ["*"]\n', "line 1, [identities]"),
        ('[identities."https://corp.example/app"]\n', "not a spiffe:// URI"),
        ('[identities."spiffe://corp.example/app/"]\n', "trailing slash"),
        ('[identities."spiffe://Corp.example/app"]\n', "[a-z0-9._-]"),
        ('[identities."spiffe://corp.example:443/app"]\n', "has a port"),
        ('[identities."spiffe://corp.example/a%2Fb"]\n', "percent-encoding"),
        ('[identities."spiffe://corp.example"]\n', "empty path"),
        ('[identities."cn: orders"]\n', "CN is empty or not printable ASCII"),
        ('\n\n[deny]\nidentities = ["spiffe://corp.example/x/../y"]\n', "line 4, deny.identities"),
        ("[identities.orders]\nmethods = []\n", "line 1, [identities]"),
    ],
)
def test_e05_policy_with_a_malformed_identity_is_refused_with_line_and_reason(
    text: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Policy.parse(text)
    assert "malformed identity" in info.value.message
    assert fragment in info.value.message


def test_malformed_identity_names_its_line_among_valid_ones() -> None:
    text = (
        f'[identities."{A}"]\nmethods = ["GetGrant"]\n\n'
        '[identities."spiffe://corp.example/b/"]\nmethods = ["GetGrant"]\n'
    )
    with pytest.raises(ConfigError) as info:
        Policy.parse(text)
    assert info.value.message == (
        "policy: line 4, [identities]: malformed identity 'spiffe://corp.example/b/': "
        "SPIFFE ID path has a trailing slash"
    )


def test_cn_namespace_entries_are_valid_policy_identities() -> None:
    policy = Policy.parse(
        '[identities."cn:orders"]\nmethods = ["GetAccessToken"]\ngrants = ["*"]\n'
    )
    assert set(policy.rules) == {"cn:orders"}
    assert policy.authorize_method(CallerIdentity("cn:orders", "cn"), "GetAccessToken").all_grants


def test_policy_holder_refuses_to_start_on_a_malformed_identity(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[identities."spiffe://corp.example/app"]\n[identities."cn-only"]\n')
    with pytest.raises(ConfigError) as info:
        PolicyHolder(path)
    assert "line 2, [identities]: malformed identity 'cn-only'" in info.value.message


async def test_reload_with_a_malformed_identity_keeps_the_old_policy(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    holder = harness.running.policy
    before = holder.current
    with caplog.at_level(logging.ERROR, logger="broker.server.policy"):
        harness.policy_path.write_text(
            harness.policy_path.read_text()
            + '\n[identities."spiffe://corp.example/stranger/"]\nmethods = ["*"]\n'
        )
        assert not holder.reload()
    assert holder.current is before
    assert "policy reload failed, keeping the previous policy" in caplog.text
    assert "malformed identity 'spiffe://corp.example/stranger/'" in caplog.text
    assert "trailing slash" in caplog.text
    reply = await harness.stub_for(APP).GetAccessToken(pb.GetAccessTokenRequest(grant_id="g-1"))
    assert reply.token.grant_id == "g-1"
