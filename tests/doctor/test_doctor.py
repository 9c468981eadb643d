"""``broker doctor`` against a real SoftHSM token and a fake Verifier (httpx.MockTransport)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import sqlite3
from pathlib import Path

import pytest

from broker.doctor.result import CheckResult, Status, exit_code, to_json, to_text
from broker.doctor.runner import ALL_NAMES, DoctorOptions, run_doctor
from tests.clock import FakeClock
from tests.conftest import SoftHsmEnv
from tests.doctor.conftest import Keys
from tests.doctor.helpers import ISSUER, CertAuthority, Deployment, FakeVerifier

pytestmark = pytest.mark.softhsm

OK, WARN, FAIL, SKIP = Status.OK, Status.WARN, Status.FAIL, Status.SKIP


async def doctor(
    dep: Deployment,
    verifier: FakeVerifier,
    clock: FakeClock,
    options: DoctorOptions | None = None,
) -> dict[str, CheckResult]:
    async with verifier.client() as http:
        results = await run_doctor(dep.write(), http=http, clock=clock, options=options)
    assert [r.name for r in results] == list(ALL_NAMES)  # every check reported, in order
    return {r.name: r for r in results}


def statuses(found: dict[str, CheckResult]) -> dict[str, Status]:
    return {name: r.status for name, r in found.items()}


def assert_no_pin(found: dict[str, CheckResult], pin: str) -> None:
    text = to_text(list(found.values())) + to_json(list(found.values()), config="x")
    assert pin not in text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- all ok ------------------------------------------------------------------------------------


async def test_all_checks_ok_on_a_complete_deployment(
    deployment: Deployment,
    verifier: FakeVerifier,
    clock: FakeClock,
    keys: Keys,
    softhsm_env: SoftHsmEnv,
) -> None:
    found = await doctor(deployment, verifier, clock)
    assert statuses(found) == dict.fromkeys(ALL_NAMES, OK), to_text(list(found.values()))
    assert exit_code(list(found.values())) == 0
    assert keys.did in found["hsm.client_key"].detail
    assert "generated in the token" in found["hsm.key_attributes"].detail
    assert "WAL" in found["store"].detail
    assert_no_pin(found, softhsm_env.pin)


async def test_client_id_equal_to_the_key_did_is_ok_and_another_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys
) -> None:
    deployment.sections["oauth"]["client_id"] = keys.did
    assert (await doctor(deployment, verifier, clock))["hsm.client_id"].status is OK
    other = "did:key:zDnaew7Cz5JbZtVGd93qxAjLB1qZEm1eXLPaWEr775R2BZkoY"
    deployment.sections["oauth"]["client_id"] = other
    found = await doctor(deployment, verifier, clock)
    assert found["hsm.client_id"].status is FAIL
    assert other in found["hsm.client_id"].detail and keys.did in found["hsm.client_id"].detail
    # Discovery does not depend on the client id: still checked.
    assert found["as.discovery"].status is OK


# --- configuration -----------------------------------------------------------------------------


async def test_missing_config_file_fails_and_skips_everything_else(
    tmp_path: Path, verifier: FakeVerifier, clock: FakeClock
) -> None:
    async with verifier.client() as http:
        results = await run_doctor(tmp_path / "nope.toml", http=http, clock=clock)
    assert results[0].name == "config.load" and results[0].status is FAIL
    assert "cannot read configuration file" in results[0].detail
    assert {r.status for r in results[1:]} == {SKIP}
    assert [r.name for r in results] == list(ALL_NAMES)
    assert exit_code(results) == 2  # as serve exits for a configuration it cannot read
    assert verifier.requests == []


async def test_invalid_config_value_is_named(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    deployment.sections["oauth"]["issuer"] = "http://verifier.example.org"
    found = await doctor(deployment, verifier, clock)
    assert found["config.load"].status is FAIL
    assert "[oauth].issuer must be an https URL" in found["config.load"].detail


async def test_missing_files_are_all_listed_and_their_checks_skip(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    Path(str(deployment.sections["grpc"]["server_key"])).unlink()
    Path(str(deployment.sections["grpc"]["policy_file"])).unlink()
    found = await doctor(deployment, verifier, clock)
    detail = found["config.files"].detail
    assert found["config.files"].status is FAIL
    assert "[grpc].server_key" in detail and "[grpc].policy_file" in detail
    assert found["config.policy"].status is SKIP
    assert found["tls.grpc_server"].status is SKIP
    assert found["tls.web"].status is OK  # unaffected


async def test_broken_policy_file_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    Path(str(deployment.sections["grpc"]["policy_file"])).write_text(
        "[identities.x]\nmethods = ['NoSuchMethod']\n", encoding="utf-8"
    )
    found = await doctor(deployment, verifier, clock)
    assert found["config.policy"].status is FAIL
    assert "[config]" in found["config.policy"].detail


# --- HSM ---------------------------------------------------------------------------------------


async def test_d05_wrong_pin_fails_login_and_skips_the_key_checks(
    deployment: Deployment,
    verifier: FakeVerifier,
    clock: FakeClock,
    tmp_path: Path,
    softhsm_env: SoftHsmEnv,
) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong_pin = "0000" + softhsm_env.pin[4:] + "x"
    wrong.write_text(wrong_pin + "\n", encoding="utf-8")
    wrong.chmod(0o600)
    uri = str(deployment.sections["key"]["uri"])
    deployment.sections["key"]["uri"] = uri.replace(str(softhsm_env.pin_file), str(wrong))
    found = await doctor(deployment, verifier, clock)
    assert statuses(found)["hsm.module"] is OK and found["hsm.token"].status is OK
    assert found["hsm.login"].status is FAIL
    assert "[pin_incorrect]" in found["hsm.login"].detail
    for name in ("hsm.client_key", "hsm.key_attributes", "hsm.selftest", "hsm.sealing"):
        assert found[name].status is SKIP
    assert found["as.dome_did"].status is SKIP  # our did is unknown
    assert found["as.discovery"].status is OK  # independent of the HSM
    assert exit_code(list(found.values())) == 1
    assert_no_pin(found, softhsm_env.pin)
    assert_no_pin(found, wrong_pin)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
async def test_pin_file_open_to_group_or_others_fails_login_naming_path_and_mode(
    deployment: Deployment,
    verifier: FakeVerifier,
    clock: FakeClock,
    softhsm_env: SoftHsmEnv,
    mode: int,
) -> None:
    loose = deployment.root / "loose.pin"
    loose.write_text(softhsm_env.pin + "\n", encoding="utf-8")  # the right PIN, readable by others
    loose.chmod(mode)
    uri = str(deployment.sections["key"]["uri"])
    deployment.sections["key"]["uri"] = uri.replace(str(softhsm_env.pin_file), str(loose))
    found = await doctor(deployment, verifier, clock)
    assert found["hsm.login"].status is FAIL
    assert f"PIN file {loose} has mode {mode:04o}" in found["hsm.login"].detail
    assert "[insecure_pin_file]" in found["hsm.login"].detail
    assert found["hsm.client_key"].status is SKIP
    assert_no_pin(found, softhsm_env.pin)
    loose.chmod(0o400)
    assert (await doctor(deployment, verifier, clock))["hsm.login"].status is OK


async def test_unknown_token_label_fails_token_check(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, softhsm_env: SoftHsmEnv
) -> None:
    uri = str(deployment.sections["key"]["uri"])
    deployment.sections["key"]["uri"] = uri.replace(
        f"token={softhsm_env.token_label}", "token=no-such-token"
    )
    found = await doctor(deployment, verifier, clock)
    assert found["hsm.token"].status is FAIL
    assert "[token_not_present]" in found["hsm.token"].detail
    assert found["hsm.login"].status is SKIP


async def test_d11_missing_client_key_fails_and_skips_dependants(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys
) -> None:
    uri = str(deployment.sections["key"]["uri"])
    deployment.sections["key"]["uri"] = uri.replace(f"object={keys.client}", "object=absent")
    found = await doctor(deployment, verifier, clock)
    assert found["hsm.client_key"].status is FAIL
    assert "[key_not_found]" in found["hsm.client_key"].detail
    for name in ("hsm.key_attributes", "hsm.selftest", "hsm.client_id", "as.dome_did"):
        assert found[name].status is SKIP
    assert found["hsm.sealing"].status is OK  # needs only the login


async def test_missing_or_unset_sealing_key_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    deployment.sections["key"]["sealing_key_label"] = "no-such-sealing-key"
    found = await doctor(deployment, verifier, clock)
    assert found["hsm.sealing"].status is FAIL
    assert "no-such-sealing-key" in found["hsm.sealing"].detail
    del deployment.sections["key"]["sealing_key_label"]
    found = await doctor(deployment, verifier, clock)
    assert found["hsm.sealing"].status is FAIL
    assert "sealing_key_label is not set" in found["hsm.sealing"].detail


async def test_i01_extractable_key_fails_attribute_check(
    deployment: Deployment,
    verifier: FakeVerifier,
    clock: FakeClock,
    keys: Keys,
    hsm_store: object,
) -> None:
    import secrets

    from pkcs11 import Attribute, KeyType, Mechanism

    from broker.keys.pkcs11 import Pkcs11KeyStore
    from broker.keys.pkcs11.objects import P256_PARAMS

    assert isinstance(hsm_store, Pkcs11KeyStore)
    label = f"doctor-weak-{secrets.token_hex(4)}"

    def make(session: object) -> None:
        session.generate_keypair(  # type: ignore[attr-defined]
            KeyType.EC,
            store=True,
            id=b"\x77",
            label=label,
            capabilities=0,
            mechanism=Mechanism.EC_KEY_PAIR_GEN,
            public_template={Attribute.EC_PARAMS: P256_PARAMS, Attribute.VERIFY: True},
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
                Attribute.SIGN: True,
            },
        )

    hsm_store.session.run("generate weak key", make)
    try:
        uri = str(deployment.sections["key"]["uri"])
        deployment.sections["key"]["uri"] = uri.replace(f"object={keys.client}", f"object={label}")
        found = await doctor(deployment, verifier, clock)
    finally:
        hsm_store.delete(label)
    assert found["hsm.key_attributes"].status is FAIL
    detail = found["hsm.key_attributes"].detail
    assert "sensitive=false" in detail and "extractable=true" in detail
    assert found["hsm.selftest"].status is OK  # it signs; custody is what is wrong


# --- authorization server ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "advertised",
    [ISSUER + "/", "https://VERIFIER.example.org", "https://other.example.org"],
)
async def test_a01_issuer_mismatch_fails_discovery_and_names_both(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, advertised: str
) -> None:
    verifier.advertised_issuer = advertised
    found = await doctor(deployment, verifier, clock)
    assert found["as.discovery"].status is FAIL
    assert repr(advertised) in found["as.discovery"].detail
    assert "[issuer_mismatch]" in found["as.discovery"].detail
    assert found["as.jwks"].status is SKIP and found["as.dome_did"].status is SKIP
    assert found["as.clock_skew"].status is OK  # the AS answered
    assert "/oidc/jwks" not in verifier.requests


async def test_token_endpoint_on_a_foreign_origin_is_refused_and_shown_by_origin(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    verifier.extra_metadata = {"token_endpoint": "https://token.example.net/oidc/token"}
    found = await doctor(deployment, verifier, clock)
    assert found["as.discovery"].status is FAIL
    assert "[endpoint_origin_refused]" in found["as.discovery"].detail
    endpoints = found["as.endpoints"]
    assert endpoints.status is FAIL and "[endpoint_origin_refused]" in endpoints.detail
    assert "token_endpoint https://token.example.net (refused" in endpoints.detail
    assert f"jwks_uri {ISSUER} (issuer's origin)" in endpoints.detail
    assert found["as.jwks"].status is SKIP


async def test_token_endpoint_on_an_allowed_origin_is_shown_as_allowed(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    verifier.extra_metadata = {"token_endpoint": "https://token.example.net/oidc/token"}
    deployment.sections["oauth"]["allowed_endpoint_origins"] = ["https://token.example.net"]
    found = await doctor(deployment, verifier, clock)
    assert found["as.discovery"].status is OK
    endpoints = found["as.endpoints"]
    assert endpoints.status is OK
    assert "token_endpoint https://token.example.net (allowed by" in endpoints.detail


async def test_unreachable_as_fails_discovery_and_skips_the_rest(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    verifier.down = True
    found = await doctor(deployment, verifier, clock)
    assert found["as.discovery"].status is FAIL
    assert "[as_unavailable]" in found["as.discovery"].detail
    for name in ("as.jwks", "as.dome_did", "as.clock_skew"):
        assert found[name].status is SKIP


async def test_jwks_without_es256_key_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    verifier.jwks_keys = [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "r1"}]
    found = await doctor(deployment, verifier, clock)
    assert found["as.jwks"].status is FAIL
    assert "no usable ES256/P-256 key" in found["as.jwks"].detail


async def test_jwks_with_several_keys_is_ok(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    assert verifier.jwks_keys is not None
    verifier.jwks_keys = [*verifier.jwks_keys, dict(verifier.jwks_keys[0], kid="second")]
    found = await doctor(deployment, verifier, clock)
    assert found["as.jwks"].status is OK and "several" in found["as.jwks"].detail


async def test_dome_did_endpoint_with_another_key_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, keys: Keys
) -> None:
    verifier.did_key = "other"
    found = await doctor(deployment, verifier, clock)
    assert found["as.dome_did"].status is FAIL
    assert "jwkSetUrl" in found["as.dome_did"].detail
    assert f"/oidc/did/{keys.did}" in verifier.requests
    assert exit_code(list(found.values())) == 1


async def test_dome_did_endpoint_404_warns_not_a_dome_verifier(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    verifier.did_key = 404
    found = await doctor(deployment, verifier, clock)
    assert found["as.dome_did"].status is WARN
    assert "not a DOME Verifier" in found["as.dome_did"].detail
    assert exit_code(list(found.values())) == 0


async def test_dome_did_endpoint_500_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    verifier.did_key = 500
    found = await doctor(deployment, verifier, clock)
    assert found["as.dome_did"].status is FAIL and "HTTP 500" in found["as.dome_did"].detail


@pytest.mark.parametrize(
    ("offset", "status", "words"),
    [
        (0.0, OK, "no measurable skew"),
        (0.6, OK, "no measurable skew"),  # within Date's one-second resolution
        (8.0, WARN, "behind the AS"),
        (-8.0, WARN, "ahead of the AS"),
        (90.0, FAIL, "over the configured clock_skew of 60 s"),
        (-90.0, FAIL, "ahead of the AS"),
    ],
)
async def test_c09_clock_skew_against_the_as_date_header(
    deployment: Deployment,
    verifier: FakeVerifier,
    clock: FakeClock,
    *,
    offset: float,
    status: Status,
    words: str,
) -> None:
    verifier.date_offset = offset
    found = await doctor(deployment, verifier, clock)
    assert found["as.clock_skew"].status is status, found["as.clock_skew"].detail
    assert words in found["as.clock_skew"].detail


async def test_c09_missing_date_header_warns(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    verifier.date_offset = None
    found = await doctor(deployment, verifier, clock)
    assert found["as.clock_skew"].status is WARN and "no Date" in found["as.clock_skew"].detail


# --- TLS ---------------------------------------------------------------------------------------


def _now(clock: FakeClock) -> dt.datetime:
    return dt.datetime.fromtimestamp(clock.now(), dt.UTC)


async def test_expired_web_certificate_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    now = _now(clock)
    ca = CertAuthority(now)
    cert, key = ca.issue(
        tmp_path / "old.pem",
        tmp_path / "old.key",
        not_before=now - dt.timedelta(days=100),
        not_after=now - dt.timedelta(days=1),
    )
    deployment.sections["web"].update(tls_cert=str(cert), tls_key=str(key))
    found = await doctor(deployment, verifier, clock)
    assert found["tls.web"].status is FAIL and "expired on" in found["tls.web"].detail
    assert exit_code(list(found.values())) == 1


async def test_not_yet_valid_server_certificate_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    now = _now(clock)
    cert, key = CertAuthority(now).issue(
        tmp_path / "f.pem", tmp_path / "f.key", not_before=now + dt.timedelta(days=2)
    )
    deployment.sections["grpc"].update(server_cert=str(cert), server_key=str(key))
    found = await doctor(deployment, verifier, clock)
    assert found["tls.grpc_server"].status is FAIL
    assert "not valid before" in found["tls.grpc_server"].detail


async def test_near_expiry_certificate_warns_within_the_configurable_window(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    now = _now(clock)
    cert, key = CertAuthority(now).issue(
        tmp_path / "soon.pem", tmp_path / "soon.key", not_after=now + dt.timedelta(days=10)
    )
    deployment.sections["grpc"].update(server_cert=str(cert), server_key=str(key))
    found = await doctor(deployment, verifier, clock)
    assert found["tls.grpc_server"].status is WARN
    assert "expires in 10.0 days" in found["tls.grpc_server"].detail
    assert exit_code(list(found.values())) == 0
    found = await doctor(deployment, verifier, clock, DoctorOptions(cert_warn_days=7))
    assert found["tls.grpc_server"].status is OK


async def test_key_not_matching_certificate_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    deployment.sections["web"]["tls_key"] = deployment.sections["grpc"]["server_key"]
    found = await doctor(deployment, verifier, clock)
    assert found["tls.web"].status is FAIL and "does not match" in found["tls.web"].detail


async def test_garbage_certificate_and_key_fail_without_echoing_them(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    junk_key = tmp_path / "junk.key"
    junk_key.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    deployment.sections["web"]["tls_key"] = str(junk_key)
    junk_cert = tmp_path / "junk.pem"
    junk_cert.write_text("not a certificate")
    deployment.sections["grpc"]["server_cert"] = str(junk_cert)
    found = await doctor(deployment, verifier, clock)
    assert found["tls.web"].status is FAIL and "not a PEM private key" in found["tls.web"].detail
    assert "c2VjcmV0" not in found["tls.web"].detail
    assert found["tls.grpc_server"].status is FAIL


async def test_client_ca_bundle_with_a_leaf_or_expired_ca_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    now = _now(clock)
    bundle = Path(str(deployment.sections["grpc"]["client_ca"]))
    bundle.write_bytes(
        bundle.read_bytes() + Path(str(deployment.sections["web"]["tls_cert"])).read_bytes()
    )
    found = await doctor(deployment, verifier, clock)
    assert found["tls.grpc_client_ca"].status is FAIL
    assert "is not a CA certificate" in found["tls.grpc_client_ca"].detail
    old = CertAuthority(now - dt.timedelta(days=400), not_after=now - dt.timedelta(days=1))
    old.write_ca(bundle)
    found = await doctor(deployment, verifier, clock)
    assert found["tls.grpc_client_ca"].status is FAIL
    assert "expired" in found["tls.grpc_client_ca"].detail


async def test_web_without_tls_warns(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    del deployment.sections["web"]["tls_cert"], deployment.sections["web"]["tls_key"]
    found = await doctor(deployment, verifier, clock)
    assert found["tls.web"].status is WARN and "plain HTTP" in found["tls.web"].detail


# --- store -------------------------------------------------------------------------------------


async def test_g03_sqlite_missing_file_warns_and_is_not_created(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "fresh.db"
    deployment.sections["store"]["path"] = str(path)
    found = await doctor(deployment, verifier, clock)
    assert found["store"].status is WARN and "does not exist yet" in found["store"].detail
    assert not path.exists()


async def test_sqlite_from_a_newer_broker_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "grants.db") as conn:
        conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)")
    conn.close()
    found = await doctor(deployment, verifier, clock)
    assert found["store"].status is FAIL and "schema version 99" in found["store"].detail


async def test_sqlite_file_that_is_not_a_database_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    deployment.sections["store"]["path"] = str(bad)
    found = await doctor(deployment, verifier, clock)
    assert found["store"].status is FAIL and "[store_unusable]" in found["store"].detail


async def test_postgres_store_unreachable_fails(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    dsn = f"host=127.0.0.1 port={closed_port()} dbname=test user=postgres connect_timeout=3"
    deployment.sections["store"] = {"kind": "postgres", "dsn": dsn}
    found = await doctor(deployment, verifier, clock)
    assert found["store"].status is FAIL
    assert "postgres" in found["store"].detail and "[store]" in found["store"].detail
    assert exit_code(list(found.values())) == 1


@pytest.mark.postgres
async def test_postgres_store_reachable_and_migrated(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    from tests.tokens.stores.helpers import (
        drop_pg_schema,
        pg_schema_name,
        postgres_dsn_or_skip,
    )

    dsn = postgres_dsn_or_skip()
    schema = pg_schema_name()
    deployment.sections["store"] = {"kind": "postgres", "dsn": dsn}
    try:
        found = await doctor(deployment, verifier, clock, DoctorOptions(pg_schema=schema))
    finally:
        drop_pg_schema(dsn, schema)
    assert found["store"].status is OK, found["store"].detail
    assert "schema version" in found["store"].detail


# --- output ------------------------------------------------------------------------------------


async def test_json_document_shape(
    deployment: Deployment, verifier: FakeVerifier, clock: FakeClock
) -> None:
    verifier.did_key = "other"
    found = await doctor(deployment, verifier, clock)
    doc = json.loads(to_json(list(found.values()), config="/etc/broker/broker.toml"))
    assert set(doc) == {"config", "ok", "summary", "checks"}
    assert doc["ok"] is False and doc["config"] == "/etc/broker/broker.toml"
    assert [c["name"] for c in doc["checks"]] == list(ALL_NAMES)
    assert all(set(c) == {"name", "status", "detail"} for c in doc["checks"])
    assert {c["status"] for c in doc["checks"]} <= {"ok", "warn", "fail", "skip"}
    assert doc["summary"] == {"ok": len(ALL_NAMES) - 1, "warn": 0, "fail": 1, "skip": 0}
