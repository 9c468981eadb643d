"""The client distribution's channel helper and typed client against the real broker server."""

from __future__ import annotations

import json

import grpc
import pytest
from broker_client import (
    AccessToken,
    AsyncBrokerClient,
    BrokerClient,
    Unavailable,
    aio_secure_channel,
    channel_options,
    secure_channel,
    service_config,
)
from broker_client.retry import MAX_ATTEMPTS, MIN_ATTEMPTS

from broker.server.limits import client_retry_service_config
from tests.client.conftest import LiveBroker

EXPECTED = AccessToken(
    access_token="at-g-1-0",
    token_type="Bearer",
    expires_at=1_800_000_300.0,
    scope="openid learcredential",
    subject="user-1",
    grant_id="g-1",
)


@pytest.mark.parametrize("attempts", range(MIN_ATTEMPTS, MAX_ATTEMPTS + 1))
def test_retry_policy_is_the_brokers_recommendation(attempts: int) -> None:
    ours = json.loads(service_config(max_attempts=attempts))
    theirs = json.loads(client_retry_service_config(max_attempts=attempts))
    assert ours == theirs
    assert json.loads(service_config()) == json.loads(client_retry_service_config())


@pytest.mark.parametrize("attempts", [MIN_ATTEMPTS - 1, MAX_ATTEMPTS + 1])
def test_retry_policy_refuses_attempts_grpc_ignores(attempts: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        service_config(max_attempts=attempts)


def test_channel_options_carry_the_retry_policy_and_server_name() -> None:
    options = dict(channel_options(server_name="broker.test"))
    assert json.loads(options["grpc.service_config"]) == json.loads(client_retry_service_config())
    assert options["grpc.ssl_target_name_override"] == "broker.test"
    assert "grpc.ssl_target_name_override" not in dict(channel_options())


def test_secure_channel_from_files_gets_a_token(live: LiveBroker) -> None:
    files = live.files()
    channel = secure_channel(
        live.target, ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
    )
    with channel:
        token = BrokerClient(channel).get_access_token("g-1", min_ttl=12.5)
    assert token == EXPECTED
    assert live.calls("get_access_token") == [("get_access_token", "g-1", 12.5)]


def test_server_certificate_not_signed_by_the_given_ca_is_refused(live: LiveBroker) -> None:
    files = live.files()
    files.ca.write_bytes(live.harness.ca.pem)  # not the CA of the broker's server certificate
    with (
        secure_channel(
            live.target, ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
        ) as channel,
        pytest.raises(Unavailable) as info,
    ):
        BrokerClient(channel, timeout=5).get_access_token("g-1")
    assert info.value.retryable
    assert info.value.code is grpc.StatusCode.UNAVAILABLE


async def test_aio_secure_channel_gets_a_token(live: LiveBroker) -> None:
    files = live.files()
    channel = aio_secure_channel(
        live.target, ca=files.ca, cert=files.cert, key=files.key, server_name="broker.test"
    )
    try:
        token = await AsyncBrokerClient(channel).get_access_token("g-1")
    finally:
        await channel.close()
    assert token == EXPECTED


def test_token_repr_hides_the_secret() -> None:
    assert "at-g-1-0" not in repr(EXPECTED)
    assert EXPECTED.authorization == "Bearer at-g-1-0"


def test_min_ttl_outside_the_brokers_range_is_refused_before_the_call() -> None:
    client = BrokerClient(grpc.insecure_channel("127.0.0.1:1"))
    with pytest.raises(ValueError, match="min_ttl"):
        client.get_access_token("g-1", min_ttl=3601)
