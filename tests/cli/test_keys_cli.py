"""``broker keys ...`` in-process through main(argv), with capsys.

Every test runs twice: over the in-memory soft backend (injected) and over the session's real
SoftHSM token through the default production wiring (Pkcs11Backend). End-to-end subprocess runs
are in test_ceremony_subprocess.py.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.audit import verify_chain
from broker.cli import GROUPS, Registrar, main
from broker.cli.keys import register as register_keys
from broker.errors import KeyNotFound
from broker.keys.didkey import did_from_public_key, public_key_from_did
from broker.keys.pkcs11 import Pkcs11KeyStore
from broker.keys.soft import SoftSigner
from tests.cli.soft_backend import SoftBackend, SoftCeremonyStore
from tests.clock import FakeClock
from tests.conftest import SoftHsmEnv

SOFT_PIN = "4711-secret-pin"


class Env:
    """One CLI under test: ``soft`` (in-memory backend, injected) or ``softhsm`` (the default
    production wiring, Pkcs11Backend, against the session's SoftHSM token)."""

    def __init__(
        self,
        kind: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        softhsm: SoftHsmEnv | None,
    ) -> None:
        self.kind = kind
        self.capsys = capsys
        self.audit = tmp_path / "audit.jsonl"
        self.suffix = "-" + secrets.token_hex(4)  # the SoftHSM token is shared by the session
        self.groups: list[Registrar]
        if softhsm is None:
            self.pin = SOFT_PIN
            self.token = "ceremony"
            self.pin_file = tmp_path / "pin"
            self.pin_file.write_text(SOFT_PIN + "\n")
            self.pin_file.chmod(0o600)
            self.backend: SoftBackend | None = SoftBackend(token=self.token, pin=SOFT_PIN)
            backend = self.backend
            self.groups = [
                functools.partial(register_keys, backend_factory=lambda: backend, clock=FakeClock())
            ]
            self.store_class: type = SoftCeremonyStore
        else:
            self.pin = softhsm.pin
            self.token = softhsm.token_label
            self.pin_file = softhsm.pin_file
            self.backend = None
            self.groups = list(GROUPS)
            self.store_class = Pkcs11KeyStore

    def label(self, name: str) -> str:
        return name + self.suffix

    def uri(
        self,
        obj: str | None = "client-2026",
        *,
        token: str | None = None,
        id_: str = "",
    ) -> str:
        path = f"pkcs11:token={token or self.token}"
        path += (f";object={self.label(obj)}" if obj else "") + id_
        return f"{path}?pin-source=file:{self.pin_file}"

    def run(self, *argv: str, key: str | None = None) -> tuple[int, str, str]:
        args = ["keys", *argv, "--audit-log", str(self.audit)]
        if argv[0] != "audit-verify":
            args += ["--operator", "alice"]
        if key is not None:
            args += ["--key", key]
        code = main(args, groups=self.groups)
        out, err = self.capsys.readouterr()
        return code, out, err

    def records(self) -> list[dict[str, object]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


@pytest.fixture(params=["soft", pytest.param("softhsm", marks=pytest.mark.softhsm)])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Env]:
    if request.param == "soft":
        yield Env("soft", tmp_path, capsys, None)
        return
    softhsm: SoftHsmEnv = request.getfixturevalue("softhsm_env")
    store: Pkcs11KeyStore = request.getfixturevalue("hsm_store")
    cli_env = Env("softhsm", tmp_path, capsys, softhsm)
    yield cli_env
    # The session token is shared with other suites: destroy what this test created.
    labels = {info.label for info in store.list() if info.label.endswith(cli_env.suffix)}
    labels.add(cli_env.label("seal-2026"))
    for label in labels:
        with contextlib.suppress(KeyNotFound):
            store.delete(label)


def _assert_no_secret(env: Env, *texts: str) -> None:
    for text in (*texts, env.audit.read_text() if env.audit.exists() else ""):
        assert env.pin not in text
        assert "PRIVATE KEY" not in text
        assert '"d"' not in text


def test_i02_generate_then_show_prints_did_kid_jwk_fingerprint(env: Env) -> None:
    code, out, err = env.run("generate", "--json", key=env.uri(id_=";id=%01"))
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["label"] == env.label("client-2026") and doc["id"] == "01"
    assert doc["did"].startswith("did:key:zDn") and doc["kid"] == doc["did"]
    public = public_key_from_did(doc["did"])
    assert doc["public_jwk"]["kid"] == doc["did"]
    assert set(doc["public_jwk"]) == {"kty", "crv", "x", "y", "kid"}
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib

    assert doc["fingerprint"] == hashlib.sha256(der).hexdigest()
    assert doc["uri"].startswith(
        f"pkcs11:token={env.token};object={env.label('client-2026')};id=%01;type=private"
    )
    assert "pin" not in doc["uri"]
    assert set(doc["custody"]) == {
        "sensitive",
        "extractable",
        "never_extractable",
        "always_sensitive",
        "local",
        "sign_only",
    }
    code, out, err = env.run("show", key=env.uri())
    assert (code, err) == (0, "")
    assert ["did:", doc["did"]] in [line.split() for line in out.splitlines()]
    assert f"SHA256:{doc['fingerprint']}" in out
    assert "custody:" in out and "sign_only=yes" in out
    records = env.records()
    assert [r["action"] for r in records] == [
        "keys.generate.intent",
        "keys.generate",
        "keys.show",
    ]
    assert all(r["outcome"] == "ok" for r in records)
    assert [r["did"] for r in records] == [None, doc["did"], doc["did"]]  # no did before the key
    assert all(r["operator"] == "alice" for r in records)
    assert records[1]["fingerprint"] == doc["fingerprint"]
    assert verify_chain(env.audit).ok
    _assert_no_secret(env, out, err)


def test_generate_without_id_uses_8_random_bytes(env: Env) -> None:
    code, out, _ = env.run("generate", "--json", key=env.uri("a"))
    assert code == 0
    first = json.loads(out)["id"]
    code, out, _ = env.run("generate", "--json", key=env.uri("b"))
    second = json.loads(out)["id"]
    assert len(bytes.fromhex(first)) == 8 and first != second


def test_generate_existing_label_fails_and_is_audited(env: Env) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    code, out, err = env.run("generate", key=env.uri())
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "key already exists" in err and "[key_exists]" in err
    assert env.records()[-1]["outcome"] == "error"
    assert env.records()[-1]["error"] == "key_exists"


def test_list_shows_every_key(env: Env) -> None:
    dids = []
    for label in ("k1", "k2"):
        code, out, _ = env.run("generate", "--json", key=env.uri(label))
        assert code == 0
        dids.append(json.loads(out)["did"])
    code, out, _ = env.run("list", "--json", key=env.uri(None))
    assert code == 0
    listed = {k["label"]: k["did"] for k in json.loads(out)["keys"]}
    assert listed[env.label("k1")] == dids[0] and listed[env.label("k2")] == dids[1]
    code, out, _ = env.run("list", key=env.uri(None))
    assert code == 0 and dids[0] in out and dids[1] in out


def test_key_uri_from_environment(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_KEY_URI", env.uri("from-env"))
    code, out, _ = env.run("generate", "--json")
    assert code == 0 and json.loads(out)["label"] == env.label("from-env")


def test_pin_file_option_overrides_pin_source(env: Env, tmp_path: Path) -> None:
    other = tmp_path / "other-pin"
    other.write_text(env.pin)
    other.chmod(0o600)
    code, _, err = env.run(
        "generate",
        "--pin-file",
        str(other),
        key=f"pkcs11:token={env.token};object={env.label('x')}",
    )
    assert (code, err) == (0, "")


def test_wrong_pin_fails_with_one_line_and_no_pin(env: Env, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("0000-not-it")
    wrong.chmod(0o600)
    code, out, err = env.run("generate", "--pin-file", str(wrong), key=env.uri())
    assert code == 1 and out == ""
    assert err.startswith("broker keys generate: login refused: wrong PIN")
    assert err.count("\n") == 1 and "0000-not-it" not in err
    record = env.records()[-1]
    assert record["outcome"] == "error" and record["error"] == "pin_incorrect"
    assert record["key_uri"] == (
        f"pkcs11:token={env.token};object={env.label('client-2026')};type=private"
        f"?pin-source=file:{env.pin_file}"
    )
    _assert_no_secret(env, out, err)


def test_missing_key_fails(env: Env) -> None:
    code, out, err = env.run("show", key=env.uri("nope"))
    assert code == 1 and out == ""
    assert "key not found" in err and "[key_not_found]" in err and err.count("\n") == 1
    assert env.records()[-1]["error"] == "key_not_found"


def test_id_mismatch_is_a_missing_key(env: Env) -> None:
    assert env.run("generate", key=env.uri(id_=";id=%01"))[0] == 0
    code, _, err = env.run("show", key=env.uri(id_=";id=%02"))
    assert code == 1 and "[key_not_found]" in err


def test_missing_token_fails(env: Env) -> None:
    code, out, err = env.run("list", key=env.uri(None, token="absent"))
    assert code == 1 and out == ""
    assert "token not found" in err and "[token_not_present]" in err


def test_malformed_uri_is_a_usage_error(env: Env) -> None:
    code, out, err = env.run("show", key="pkcs11:object=x;serial=1")
    assert code == 2 and out == ""
    assert "malformed key URI" in err and err.count("\n") == 1
    record = env.records()[-1]
    assert record["error"] == "invalid_key_uri" and record["key_uri"] is None


def test_pin_value_in_uri_is_refused_and_not_echoed(env: Env) -> None:
    key = f"pkcs11:token={env.token};object={env.label('x')}?pin-value={env.pin}"
    code, out, err = env.run("generate", key=key)
    assert code == 2 and out == ""
    assert "pin-value" in err
    _assert_no_secret(env, out, err)


def test_no_key_uri_is_a_usage_error(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BROKER_KEY_URI", raising=False)
    code, _, err = env.run("show")
    assert code == 2 and "BROKER_KEY_URI" in err


def test_uri_without_object_is_refused_for_show(env: Env) -> None:
    code, _, err = env.run("show", key=env.uri(None))
    assert code == 2 and "object=" in err


def test_argparse_errors_are_one_line_exit_2(env: Env) -> None:
    code, out, err = env.run("tsl-entry", key=env.uri())  # missing --issuer etc.
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "required" in err
    code = main(["keys"], groups=env.groups)
    out, err = env.capsys.readouterr()
    assert code == 2 and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [["--pin", "@"], ["--pin=@"], ["--pin-value", "@"], ["--pin-f", "@"], ["--so-pin", "@"]],
)
def test_a_pin_on_argv_is_refused_and_not_echoed(env: Env, argv: list[str]) -> None:
    argv = [a.replace("@", env.pin) for a in argv]
    code, out, err = env.run("generate", *argv, key=env.uri())
    assert code == 2 and out == "" and err.count("\n") == 1
    assert env.pin not in err
    assert not env.records()  # nothing ran


def test_tsl_entry_matches_the_dome_profile(env: Env) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    argv = [
        "tsl-entry",
        "--issuer",
        "https://verifier.dome-marketplace.eu",
        "--url",
        "https://broker.example.org",
        "--redirect-uri",
        "https://broker.example.org/callback",
        "--redirect-uri",
        "https://broker.example.org/callback2",
        "--post-logout-uri",
        "https://broker.example.org/",
    ]
    code, out, err = env.run(*argv, key=env.uri())
    assert (code, err) == (0, "")
    parsed = yaml.safe_load(out)
    assert isinstance(parsed, list) and len(parsed) == 1
    entry = parsed[0]
    did = env.records()[-1]["did"]
    assert entry == {
        "clientId": did,
        "url": "https://broker.example.org",
        "redirectUris": [
            "https://broker.example.org/callback",
            "https://broker.example.org/callback2",
        ],
        "scopes": ["openid_learcredential"],
        "clientAuthenticationMethods": ["client_secret_jwt"],
        "authorizationGrantTypes": ["authorization_code", "refresh_token"],
        "postLogoutRedirectUris": ["https://broker.example.org/"],
        "requireAuthorizationConsent": False,
        "requireProofKey": False,
        "jwkSetUrl": f"https://verifier.dome-marketplace.eu/oidc/did/{did}",
        "tokenEndpointAuthenticationSigningAlgorithm": "ES256",
    }
    assert entry["jwkSetUrl"].rsplit("/", 1)[1] == entry["clientId"]
    assert out.startswith(f'- clientId: "{did}"\n  url: "https://broker.example.org"\n')
    code, out, _ = env.run(*argv, "--json", key=env.uri())
    assert code == 0 and json.loads(out) == entry


def test_tsl_entry_with_jwks_uri_names_the_brokers_key_set(env: Env) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    jwks = "https://broker.example.org/.well-known/jwks.json"
    code, out, err = env.run(
        "tsl-entry",
        "--issuer",
        "https://verifier.dome-marketplace.eu",
        "--url",
        "https://broker.example.org",
        "--redirect-uri",
        "https://broker.example.org/callback",
        "--jwks-uri",
        jwks,
        key=env.uri(),
    )
    assert (code, err) == (0, "")
    entry = yaml.safe_load(out)[0]
    assert entry["jwkSetUrl"] == jwks
    assert entry["clientId"] == env.records()[-1]["did"]


def test_tsl_entry_rejects_plain_http_issuer(env: Env) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    code, out, err = env.run(
        "tsl-entry",
        "--issuer",
        "http://verifier.example.org",
        "--url",
        "https://b.example.org",
        "--redirect-uri",
        "https://b.example.org/cb",
        key=env.uri(),
    )
    assert code == 2 and out == "" and "--issuer must use https" in err
    assert env.records()[-1]["error"] == "invalid_argument"


def test_selftest_signs_and_verifies(env: Env) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    code, out, err = env.run("selftest", "--json", key=env.uri())
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["ok"] is True and doc["kid"] == doc["did"]
    from jwcrypto.jwk import JWK
    from jwcrypto.jws import JWS

    from broker.keys.didkey import jwk_from_did

    check = JWS()
    check.deserialize(doc["jws"])
    check.verify(JWK(**jwk_from_did(doc["did"])), alg="ES256")
    assert json.loads(check.payload)["challenge"] == doc["challenge"]
    assert env.records()[-1]["action"] == "keys.selftest"


def test_selftest_fails_when_the_token_key_is_not_the_did(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    did = env.records()[-1]["did"]
    assert isinstance(did, str)
    impostor = ec.generate_private_key(ec.SECP256R1())
    monkeypatch.setattr(
        env.store_class, "signer", lambda self, label: SoftSigner(label, impostor, did)
    )
    code, out, err = env.run("selftest", key=env.uri())
    assert code == 1 and out == ""
    assert "self-test failed" in err and "[selftest_failed]" in err
    assert env.records()[-1]["error"] == "selftest_failed"


def test_destroy_refuses_a_wrong_did(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    other = did_from_public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    monkeypatch.setattr("sys.stdin", io.StringIO(other + "\n"))
    code, out, err = env.run("destroy", key=env.uri())
    assert code == 1 and out == ""
    assert "not confirmed" in err and "[confirmation_mismatch]" in err
    assert env.records()[-1]["error"] == "confirmation_mismatch"
    assert env.run("show", key=env.uri())[0] == 0  # still there


def test_destroy_refuses_on_empty_stdin(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = env.run("destroy", key=env.uri())
    assert code == 1 and "[confirmation_mismatch]" in err


def test_destroy_with_the_typed_did(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = env.run("generate", "--json", key=env.uri())
    did = json.loads(out)["did"]
    monkeypatch.setattr("sys.stdin", io.StringIO(did + "\n"))
    code, out, err = env.run("destroy", "--json", key=env.uri())
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc == {
        "destroyed": True,
        "label": env.label("client-2026"),
        "kind": "signing",
        "id": doc["id"],
        "did": did,
        "fingerprint": doc["fingerprint"],
        "uri": env.records()[-1]["key_uri"],
    }
    assert env.records()[-1]["action"] == "keys.destroy"
    assert env.run("show", key=env.uri())[0] == 1


def test_destroy_yes_skips_the_prompt(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.run("generate", key=env.uri())[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, out, _ = env.run("destroy", "--yes", key=env.uri())
    assert code == 0 and out.startswith(f"destroyed key '{env.label('client-2026')}'")


def test_generate_sealing_key(env: Env) -> None:
    code, out, err = env.run("generate-sealing-key", "--json", key=env.uri("seal-2026"))
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["label"] == env.label("seal-2026") and doc["type"] == "AES-256"
    assert len(bytes.fromhex(doc["id"])) == 8
    assert f";id=%{doc['id'][:2].upper()}" in doc["uri"] and ";type=secret-key" in doc["uri"]
    assert env.records()[-1]["key_uri"] == doc["uri"]  # the audit names the generated id
    code, _, err = env.run("generate-sealing-key", key=env.uri("seal-2026"))
    assert code == 1 and "[key_exists]" in err  # it really is on the token
    assert env.records()[-1]["action"] == "keys.generate_sealing_key"


def test_unwritable_audit_log_stops_before_the_token(env: Env, tmp_path: Path) -> None:
    env.audit = tmp_path / "no-such-dir" / "audit.jsonl"
    code, out, err = env.run("generate", key=env.uri())
    assert code == 1 and out == "" and "audit log" in err and "[audit]" in err
    env.audit = tmp_path / "audit.jsonl"
    code, _, err = env.run("show", key=env.uri())
    assert code == 1 and "[key_not_found]" in err  # nothing was generated


def test_damaged_audit_log_stops_before_the_token(env: Env) -> None:
    env.audit.write_text('{"seq":1')
    code, _, err = env.run("generate", key=env.uri())
    assert code == 1 and "incomplete" in err
    env.audit.unlink()
    code, _, err = env.run("show", key=env.uri())
    assert code == 1 and "[key_not_found]" in err  # nothing was generated


def test_every_step_appends_exactly_one_record(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    steps = [
        ("generate",),
        ("show",),
        ("selftest",),
        ("list",),
        ("show",),
        ("destroy",),
        ("destroy", "--yes"),
        ("show",),
    ]
    count = 0
    for step in steps:
        env.run(*step, key=env.uri())
        count += 2 if step[0] == "generate" else 1  # generate: intent, then completion
        assert len(env.records()) == count
    outcomes = [(r["action"], r["outcome"]) for r in env.records()]
    assert outcomes == [
        ("keys.generate.intent", "ok"),
        ("keys.generate", "ok"),
        ("keys.show", "ok"),
        ("keys.selftest", "ok"),
        ("keys.list", "ok"),
        ("keys.show", "ok"),
        ("keys.destroy", "error"),
        ("keys.destroy", "ok"),
        ("keys.show", "error"),
    ]
    assert verify_chain(env.audit).ok


def test_audit_verify_reports_ok_and_tampering(env: Env) -> None:
    for label in ("a", "b", "c"):
        assert env.run("generate", key=env.uri(label))[0] == 0
    code, out, err = env.run("audit-verify", "--log", str(env.audit), "--json")
    assert (code, err) == (0, "")
    assert json.loads(out)["ok"] is True and json.loads(out)["records"] == 6  # intent + done
    lines = env.audit.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace(f"object={env.label('b')}", f"object={env.label('z')}")
    env.audit.write_text("".join(lines))
    code, out, err = env.run("audit-verify", "--log", str(env.audit))
    assert code == 1
    assert "BROKEN" in out and "seq 4" in out
    assert err.count("\n") == 1 and "audit chain broken at record 4" in err
    code, out, _ = env.run("audit-verify", "--json")  # --log defaults to --audit-log
    assert code == 1 and json.loads(out)["first_bad_seq"] == 4  # one document, error inside
    assert json.loads(out)["error"] == {
        "reason": "audit_chain_broken",
        "message": "audit chain broken at record 4: " + json.loads(out)["reason"],
        "retryable": False,
    }
    # no ceremony runs on an edited log: the orphan check reads the verified chain
    code, _, err = env.run("show", key=env.uri("a"))
    assert code == 1 and "audit chain broken at record 4" in err and "[audit_chain_broken]" in err


def test_audit_verify_missing_log(env: Env, tmp_path: Path) -> None:
    code, _, err = env.run("audit-verify", "--log", str(tmp_path / "none.jsonl"))
    assert code == 1 and "does not exist" in err


def test_h02_ceremony_spans_carry_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    env = Env("soft", tmp_path, capsys, None)
    backend = env.backend
    assert backend is not None
    env.groups = [
        functools.partial(register_keys, backend_factory=lambda: backend, tracer_provider=provider)
    ]
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-pin-0815")
    wrong.chmod(0o600)
    assert env.run("generate", key=env.uri())[0] == 0
    assert env.run("selftest", key=env.uri())[0] == 0
    assert env.run("show", "--pin-file", str(wrong), key=env.uri())[0] == 1
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [
        "ceremony.keys.generate",
        "ceremony.keys.selftest",
        "ceremony.keys.show",
    ]
    did = env.records()[1]["did"]  # records[0] is the intent: no did yet
    assert spans[0].attributes is not None and spans[0].attributes["kid"] == did
    assert spans[0].attributes["outcome"] == "ok"
    assert spans[2].attributes is not None
    assert spans[2].attributes["error.reason"] == "pin_incorrect"
    for span in spans:
        values = " ".join(str(v) for v in (span.attributes or {}).values())
        assert SOFT_PIN not in values and "not-the-pin-0815" not in values
        assert "eyJ" not in values  # no JWS (the self-test signature) in attributes


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "tsl-entry", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--redirect-uri" in out and "--issuer" in out
    assert main([]) == 2
    assert capsys.readouterr().err == "broker: the following arguments are required: GROUP\n"


def test_key_created_outside_the_ceremonies_is_an_orphan_until_adopted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key with no audit record at all (made behind the CLI's back) is named in one line by
    every keys command (read-only ones warn, the others refuse); adopt records it after the did
    is typed."""
    env = Env("soft", tmp_path, capsys, None)
    assert env.backend is not None
    assert env.run("generate", key=env.uri("known"))[0] == 0
    info = env.backend.store.generate(env.label("stray"), b"\x07")  # no ceremony, no record
    for argv, key, refused in (
        (["list"], env.uri(None), False),
        (["show"], env.uri("known"), False),
        (["generate"], env.uri("third"), True),
    ):
        code, out, err = env.run(*argv, key=key)
        assert err.count("\n") == 1
        if refused:
            assert (code, out) == (1, "")
        else:  # read-only commands warn and go on
            assert code == 0 and out and err.startswith("warning: orphan key: ")
        assert f"key '{env.label('stray')}' ({info.did}): no completed audit record" in err
        assert "broker keys adopt --key pkcs11:token=ceremony;object=stray-" in err
    monkeypatch.setattr("sys.stdin", io.StringIO(info.did + "\n"))
    code, out, err = env.run("adopt", "--json", key=env.uri("stray"))
    assert (code, err) == (0, "")
    assert json.loads(out)["did"] == info.did
    last = env.records()[-1]
    assert (last["action"], last["outcome"], last["did"]) == ("keys.adopt", "ok", info.did)
    assert env.run("show", key=env.uri("known"))[0] == 0
    # replaced behind the CLI's back under a recorded label: an orphan again
    env.backend.store.delete(env.label("stray"))
    env.backend.store.generate(env.label("stray"), b"\x07")
    code, _, err = env.run("generate", key=env.uri("fourth"))
    assert code == 1 and "the audit log records another key under this label" in err
    assert verify_chain(env.audit).ok
