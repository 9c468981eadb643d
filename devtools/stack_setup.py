"""What :meth:`devtools.stack.DevStack.up` lays out before any process starts.

- :func:`provision_keys`: a private SoftHSM token (``softhsm/init-token.sh``, PINs in files) and,
  through the ceremony CLI, the client key and the sealing key (audit log in the work dir);
- :func:`make_pki`: a throw-away mTLS PKI: one CA, a server certificate for 127.0.0.1/localhost
  (gRPC, HTTPS listener and the verifier), a client certificate with a SPIFFE URI SAN;
- :class:`BrokerConfig` and :func:`render_config`: ``broker.toml``; :func:`store_section` and
  :func:`telemetry_section` its ``[store]`` and ``[telemetry]`` bodies;
- :func:`run_cli`: one ``broker`` command with a bound on its time, failing with
  :class:`StackError` and the tail of its stderr.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.peer import ROOT, Pki
from devtools.pki import Ca

TOKEN_LABEL = "broker-demo"  # noqa: S105 - a PKCS#11 token label, not a secret
CLIENT_KEY_LABEL = "client"
SEALING_KEY_LABEL = "sealing"
CALLER_IDENTITY = "spiffe://demo.local/app"


class StackError(RuntimeError):
    pass


CLI_TIMEOUT_S = 120.0  # a bound on a hung ceremony command


def run_cli(argv: list[str], env: dict[str, str], what: str) -> str:
    """Run ``argv`` in the checkout with ``env``; its stdout, or :class:`StackError`."""
    try:
        proc = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
            timeout=CLI_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what} did not finish within {CLI_TIMEOUT_S:g}s") from exc
    if proc.returncode != 0:
        raise StackError(f"{what} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


@dataclass(frozen=True)
class BrokerConfig:
    """What ``broker.toml`` is rendered from (see :func:`render_config`)."""

    key_uri: str
    issuer: str
    did: str
    redirect_uri: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    web_port: int
    grpc_port: int
    policy_file: Path
    store: str
    telemetry: str
    refresh_threshold: float
    min_serve_ttl: float
    background_interval: float
    max_concurrent_rpcs: int | None
    audit_log: Path
    public_port: int | None = None
    """The port of ``public_base_url`` (redirect_uri, request_uri) when browsers and the AS
    reach the listener through a front on another port; None: the listener's own port."""


def render_config(c: BrokerConfig) -> str:
    public = f"https://127.0.0.1:{c.public_port or c.web_port}"
    limits = (
        f"max_concurrent_rpcs = {c.max_concurrent_rpcs}\n"
        if c.max_concurrent_rpcs is not None
        else ""
    )
    return f"""# written by devtools.stack
[key]
uri = "{c.key_uri}"
sealing_key_label = "{SEALING_KEY_LABEL}"

[oauth]
issuer = "{c.issuer}"
client_id = "{c.did}"
redirect_uri = "{c.redirect_uri}"
ca_file = "{c.ca_file}"
http_timeout = 10

[web]
host = "127.0.0.1"
port = {c.web_port}
public_base_url = "{public}"
tls_cert = "{c.cert_file}"
tls_key = "{c.key_file}"

[grpc]
bind = "127.0.0.1:{c.grpc_port}"
server_cert = "{c.cert_file}"
server_key = "{c.key_file}"
client_ca = "{c.ca_file}"
policy_file = "{c.policy_file}"
reflection = true
{limits}
[store]
{c.store}
[tokens]
refresh_threshold = {c.refresh_threshold}
min_serve_ttl = {c.min_serve_ttl}
background_interval = {c.background_interval}

[telemetry]
{c.telemetry}service_name = "broker"
log_format = "json"
log_level = "INFO"

[audit]
path = "{c.audit_log}"
"""


@dataclass(frozen=True)
class Keys:
    """The stack's token and keys: the environment that reaches the token (``SOFTHSM2_CONF``,
    the audit log), the client key's URI and did:key, what each ceremony command printed."""

    env: dict[str, str] = field(repr=False)
    key_uri: str
    did: str
    audit_log: Path
    outputs: dict[str, str] = field(repr=False)


def provision_keys(workdir: Path) -> Keys:
    """Initialise the SoftHSM token in ``workdir/hsm`` and make (once) the client and sealing
    keys through ``broker keys``; show and self-test the client key."""
    workdir.mkdir(parents=True, exist_ok=True)
    hsm_dir = workdir / "hsm"
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    so_pin, user_pin = secrets_dir / "so_pin", secrets_dir / "user_pin"
    for path in (so_pin, user_pin):
        if not path.exists():  # created 0600 (never readable by others, not even briefly)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(8) + "\n")
    audit_log = workdir / "audit.jsonl"
    run_cli(
        [
            "bash",
            str(ROOT / "softhsm" / "init-token.sh"),
            str(hsm_dir),
            TOKEN_LABEL,
            str(so_pin),
            str(user_pin),
            str(audit_log),  # audited (keys.init_token), like every later ceremony
        ],
        dict(os.environ),
        "SoftHSM token initialisation",
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(hsm_dir / "softhsm2.conf")}
    env.pop("BROKER_CONFIG", None)
    env["BROKER_AUDIT_LOG"] = str(audit_log)  # every ceremony step, reads included
    key_uri = (
        f"pkcs11:token={TOKEN_LABEL};object={CLIENT_KEY_LABEL};id=%01?pin-source=file:{user_pin}"
    )
    sealing_uri = (
        f"pkcs11:token={TOKEN_LABEL};object={SEALING_KEY_LABEL};id=%02?pin-source=file:{user_pin}"
    )
    cli = [sys.executable, "-m", "broker.cli", "keys"]
    outputs: dict[str, str] = {}
    listed = json.loads(run_cli([*cli, "list", "--key", key_uri, "--json"], env, "keys list"))
    if not _has_label(listed, CLIENT_KEY_LABEL):
        outputs["generate"] = run_cli(
            [
                *cli,
                "generate",
                "--key",
                key_uri,
                "--audit-log",
                str(audit_log),
                "--operator",
                "demo",
            ],
            env,
            "keys generate",
        )
        outputs["generate-sealing-key"] = run_cli(
            [
                *cli,
                "generate-sealing-key",
                "--key",
                sealing_uri,
                "--audit-log",
                str(audit_log),
                "--operator",
                "demo",
            ],
            env,
            "keys generate-sealing-key",
        )
    shown = json.loads(run_cli([*cli, "show", "--key", key_uri, "--json"], env, "keys show"))
    did = _find_did(shown)
    outputs["show"] = run_cli([*cli, "show", "--key", key_uri], env, "keys show")
    outputs["selftest"] = run_cli(
        [
            *cli,
            "selftest",
            "--key",
            key_uri,
            "--audit-log",
            str(audit_log),
            "--operator",
            "demo",
        ],
        env,
        "keys selftest",
    )
    return Keys(env=env, key_uri=key_uri, did=did, audit_log=audit_log, outputs=outputs)


def make_pki(workdir: Path) -> tuple[Ca, Pki, Path]:
    """The CA, the server's TLS files (as the peer takes them) and the directory of the PKI
    files (``ca.pem``, ``server*.pem``, ``client*.pem``, each 0600)."""
    pki_dir = workdir / "pki"
    pki_dir.mkdir(exist_ok=True)
    ca = Ca("broker demo CA")
    server = ca.issue(cn="localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    client = ca.issue(cn="demo-app", uris=(CALLER_IDENTITY,))
    files = {
        "ca.pem": ca.pem,
        "server.pem": server.cert_pem,
        "server-key.pem": server.key_pem,
        "client.pem": client.cert_pem,
        "client-key.pem": client.key_pem,
    }
    for name, data in files.items():
        (pki_dir / name).write_bytes(data)
        (pki_dir / name).chmod(0o600)
    pki = Pki(pki_dir / "ca.pem", pki_dir / "server.pem", pki_dir / "server-key.pem")
    return ca, pki, pki_dir


def store_section(kind: str, workdir: Path, dsn: str | None, schema: str | None) -> str:
    """The body of ``[store]``: PostgreSQL at ``dsn`` (in ``schema``), else ``workdir``'s
    SQLite file."""
    if kind == "postgres":
        return f'kind = "postgres"\ndsn = "{dsn}"\n' + (f'schema = "{schema}"\n' if schema else "")
    return f'kind = "sqlite"\npath = "{workdir / "broker.db"}"\n'


def telemetry_section(otlp_endpoint: str | None) -> str:
    """The start of ``[telemetry]``: OTLP/HTTP traces and metrics to ``otlp_endpoint``, or off."""
    if otlp_endpoint:
        return f'traces = "otlp-http"\nmetrics = "otlp-http"\nendpoint = "{otlp_endpoint}"\n'
    return 'traces = "off"\nmetrics = "off"\n'


def _has_label(listed: Any, label: str) -> bool:
    text = json.dumps(listed)
    return f'"{label}"' in text


def _find_did(doc: Any) -> str:
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "did" and isinstance(value, str):
                return value
            found = _find_did(value)
            if found:
                return found
    if isinstance(doc, list):
        for value in doc:
            found = _find_did(value)
            if found:
                return found
    return ""
