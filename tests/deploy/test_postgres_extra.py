"""psycopg is the optional ``postgres`` extra: nothing imports it unless a postgres store is
configured, and then the error names the extra.

Each case runs in a subprocess whose import system refuses ``psycopg`` (as an installation
without the extra would), so the test venv's psycopg cannot hide an eager import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCK_PSYCOPG = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoPsycopg(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "psycopg" or name.startswith(("psycopg.", "psycopg_")):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoPsycopg())
    """
)


def run_without_psycopg(body: str) -> dict[str, object]:
    script = BLOCK_PSYCOPG + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def postgres_config(tmp_path: Path) -> Path:
    text = (ROOT / "deploy" / "broker.toml").read_text()
    sqlite = 'kind = "sqlite"\npath = "/var/lib/broker/broker.db"\n'
    assert sqlite in text
    config = tmp_path / "broker.toml"
    config.write_text(
        text.replace(sqlite, 'kind = "postgres"\ndsn = "postgresql://broker@127.0.0.1:1/broker"\n')
    )
    return config


def test_serve_cli_and_doctor_import_without_psycopg() -> None:
    out = run_without_psycopg(
        """
        import json, sys
        import broker.cli, broker.app.serve, broker.doctor.store, broker.cli.serve
        print(json.dumps({"loaded": sorted(m for m in sys.modules if m.startswith("psycopg"))}))
        """
    )
    assert out == {"loaded": []}


def test_postgres_store_without_the_extra_is_a_config_error_naming_it(tmp_path: Path) -> None:
    config = postgres_config(tmp_path)
    out = run_without_psycopg(
        f"""
        import asyncio, json
        from broker.clock import SystemClock
        from broker.app.settings import load_settings
        from broker.doctor.store import RefusingSealer, check_store
        from broker.errors import ConfigError
        from broker.app.stores import open_store
        from broker.tokens.stores.deployment import DeploymentIdentity

        settings = load_settings({str(config)!r}, check_files=False)
        identity = DeploymentIdentity(issuer="https://as.example", client_id="c", did="c")
        try:
            asyncio.run(open_store(settings, RefusingSealer(), SystemClock(), identity))
        except ConfigError as exc:
            serve = {{"message": exc.message, "reason": exc.reason, "retryable": exc.retryable}}
        doctor = asyncio.run(check_store(settings, SystemClock())).as_dict()
        print(json.dumps({{"serve": serve, "doctor": doctor}}))
        """
    )
    serve = out["serve"]
    assert isinstance(serve, dict)
    assert serve["reason"] == "missing_extra" and serve["retryable"] is False
    assert "dome-token-broker[postgres]" in serve["message"]
    doctor = out["doctor"]
    assert isinstance(doctor, dict)
    assert doctor["status"] == "fail"
    assert (
        "dome-token-broker[postgres]" in doctor["detail"] and "[missing_extra]" in doctor["detail"]
    )


def test_sqlite_store_opens_without_psycopg(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    text = (ROOT / "deploy" / "broker.toml").read_text()
    config.write_text(text.replace("/var/lib/broker/broker.db", str(tmp_path / "grants.db")))
    out = run_without_psycopg(
        f"""
        import asyncio, json, sys
        from broker.clock import SystemClock
        from broker.app.settings import load_settings
        from broker.doctor.store import RefusingSealer
        from broker.app.stores import open_store
        from broker.tokens.stores.deployment import DeploymentIdentity

        async def main():
            settings = load_settings({str(config)!r}, check_files=False)
            identity = DeploymentIdentity(issuer="https://as.example", client_id="c", did="c")
            store = await open_store(settings, RefusingSealer(), SystemClock(), identity)
            await store.ping()
            await store.close()
            return type(store).__name__

        name = asyncio.run(main())
        print(json.dumps({{"store": name, "psycopg": "psycopg" in sys.modules}}))
        """
    )
    assert out == {"store": "SqliteGrantStore", "psycopg": False}
