"""The client as a calling service gets it: the wheel of clients/python alone, installed into a
clean virtual environment (no system site-packages, not the broker's venv) with only its
declared dependencies, at the versions requirements/runtime.lock pins; there the README's
five-line example, run exactly as the README shows it, gets a token from a real broker server
(mTLS, generated PKI, fake token core)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.client.conftest import serve
from tests.client.connect_proxy import ConnectProxy
from tests.server.conftest import APP
from tests.server.fakes import make_grant

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "clients" / "python"
README = CLIENT / "README.md"
LOCK = REPO / "requirements" / "runtime.lock"
DIST = "dome-token-broker-client"
EXAMPLE_BEGIN = "<!-- five-line-example"
EXAMPLE_END = "<!-- /five-line-example -->"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
HEAVY = ("broker", "pkcs11", "psycopg", "uvicorn")
# What pip prints when it cannot reach the index (then the test skips; any other failure fails).
NETWORK_SIGNS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
)
DEFAULT_INDEX = "https://pypi.org/simple/"
TIMEOUT = 300.0  # pip and venv on a shared machine: generous


# --- the README -------------------------------------------------------------------------


def python_blocks(markdown: str) -> list[str]:
    return PYTHON_BLOCK.findall(markdown)


def five_line_example(markdown: str) -> str:
    """The one python block between the five-line-example markers."""
    start = markdown.index(EXAMPLE_BEGIN)
    end = markdown.index(EXAMPLE_END, start)
    (block,) = python_blocks(markdown[start:end])
    return block


def test_readme_python_blocks_compile() -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4  # the five lines, httpx, requests, channels
    for n, block in enumerate(blocks):
        compile(block, f"{README.name}:python-block-{n}", "exec")


def test_readme_python_blocks_type_check(tmp_path: Path) -> None:
    """``mypy --strict`` over every block, each its own module against the client's source;
    the blocks after the first use the five-line example's ``source``."""
    prelude = "from broker_client import TokenSource\n\nsource: TokenSource\n\n"
    blocks = python_blocks(README.read_text())
    files = []
    for n, block in enumerate(blocks):
        files.append(tmp_path / f"readme_block_{n}.py")
        files[-1].write_text(block if n == 0 else prelude + block)
    checked = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--no-error-summary"),
            *("--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(tmp_path / "c")),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,  # the config's mypy_path (clients/python) is relative to it
        timeout=TIMEOUT,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_readme_five_line_example_is_five_lines() -> None:
    example = five_line_example(README.read_text())
    assert len([line for line in example.splitlines() if line.strip()]) == 5
    assert "TokenSource.connect(" in example


# --- the wheel --------------------------------------------------------------------------


def build_client_wheel(out: Path) -> Path:
    """``pip wheel --no-deps clients/python`` from a copy of the source tree without build
    output (a clean checkout), with the venv's setuptools (no build isolation: no index)."""
    source = out / "src"
    shutil.copytree(
        CLIENT,
        source,
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist"),
    )
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(out / "dist"), str(source)),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = (out / "dist").glob("dome_token_broker_client-*-py3-none-any.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_client_wheel(tmp_path_factory.mktemp("client-wheel"))


def test_client_wheel_holds_broker_client_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    dist_info = f"dome_token_broker_client-{wheel.name.split('-')[1]}.dist-info/"
    assert {n.split("/", 1)[0] + "/" for n in names} == {"broker_client/", dist_info}
    assert "broker_client/py.typed" in names
    assert "broker_client/gen/broker/v1/broker_pb2.pyi" in names
    assert not [n for n in names if "tests/" in n or "tools/" in n or n.endswith(".pyc")]
    source = {
        p.relative_to(CLIENT).as_posix()
        for p in (CLIENT / "broker_client").rglob("*")
        if p.suffix in (".py", ".pyi", ".typed") and "__pycache__" not in p.parts
    }
    assert source == {n for n in names if not n.startswith(dist_info)}


def test_client_wheel_requires_grpcio_and_protobuf_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(zf.read(meta).decode())
    assert metadata["Name"] == DIST
    runtime = [
        Requirement(r) for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r
    ]
    assert sorted(r.name for r in runtime) == ["grpcio", "protobuf"]
    assert metadata.get_payload(), "the README is the long description"


# --- the clean venv ---------------------------------------------------------------------


def locked(*names: str) -> list[str]:
    """``name==version`` for ``names`` as requirements/runtime.lock pins them."""
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", LOCK.read_text(), re.MULTILINE))
    return [f"{name}=={pins[name]}" for name in names]


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """The environment of a service's shell: no PYTHONPATH or VIRTUAL_ENV of this test run,
    pip's own settings kept (the index configuration of this machine)."""
    keep = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("HOME", "LANG")}
    return {**keep, "PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin", **extra}


@dataclass(frozen=True)
class CleanVenv:
    root: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(self, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), *args],
            cwd=cwd,
            env=clean_env(self.root, **env),
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT,
        )


def make_clean_venv(root: Path, wheel: Path) -> CleanVenv:
    """``python -m venv`` (no system site-packages), then its own pip installs the wheel with
    its dependencies held to the lock's versions. Skips when the index cannot be reached."""
    subprocess.run(
        [sys.executable, "-m", "venv", str(root)],
        check=True,
        timeout=TIMEOUT,
        env=clean_env(root),
        capture_output=True,
    )
    constraints = root.parent / "constraints.txt"
    constraints.write_text("\n".join(locked("grpcio", "protobuf")) + "\n")
    venv = CleanVenv(root)
    installed = venv.run(
        *("-m", "pip", "install", "-q", "-c", str(constraints), str(wheel)), cwd=root.parent
    )
    if installed.returncode != 0:
        output = installed.stdout + installed.stderr
        if any(sign in output for sign in NETWORK_SIGNS) or not index_reachable():
            pytest.skip(f"pip could not reach the package index for grpcio/protobuf:\n{output}")
        raise AssertionError(f"pip install of the client wheel failed:\n{output}")
    return venv


def index_reachable() -> bool:
    """Whether pip's index (``PIP_INDEX_URL``, else PyPI's) answers at all; pip does not always
    say that a connection failed (``PIP_RETRIES=0``: only "ResolutionImpossible")."""
    url = os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return True  # a local index: no network to lose
    try:
        with urllib.request.urlopen(url, timeout=30):  # noqa: S310 (http(s) only, checked above)
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> CleanVenv:
    return make_clean_venv(tmp_path_factory.mktemp("clean-venv") / "venv", wheel)


PROBE = f"""
import importlib.metadata as md, importlib.util, json, site, sys
print(json.dumps({{
    "isolated": sys.prefix != sys.base_prefix,
    "site": site.getsitepackages() + [site.getusersitepackages()],
    "path": sys.path,
    "requires": {{d.metadata["Name"]: d.requires or [] for d in md.distributions()}},
    "found": [n for n in {list(HEAVY)!r} if importlib.util.find_spec(n) is not None],
    "client": importlib.util.find_spec("broker_client").origin,
}}))
"""


def closure(requires: dict[str, list[str]], root: str) -> set[str]:
    """``root`` and what it needs, transitively, without extras."""
    by_name = {canonicalize_name(k): v for k, v in requires.items()}
    seen: set[str] = set()
    todo = [canonicalize_name(root)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in by_name.get(name, []):
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


@pytest.mark.slow
def test_clean_venv_holds_the_client_and_its_dependencies_only(venv: CleanVenv) -> None:
    probed = venv.run("-c", PROBE, cwd=venv.root)
    assert probed.returncode == 0, probed.stderr
    facts = json.loads(probed.stdout)
    assert facts["isolated"]
    assert "include-system-site-packages = false" in (venv.root / "pyvenv.cfg").read_text()
    assert all(Path(p).is_relative_to(venv.root) for p in facts["site"][:-1]), facts["site"]
    assert not [p for p in facts["path"] if p.startswith(str(REPO))], facts["path"]
    assert facts["found"] == []  # no broker, pkcs11, psycopg, uvicorn
    assert Path(facts["client"]).is_relative_to(venv.root)
    installed = {canonicalize_name(n) for n in facts["requires"]}
    needed = closure(facts["requires"], DIST)
    assert {"dome-token-broker-client", "grpcio", "protobuf"} <= needed
    assert installed - {"pip", "setuptools"} == needed


EXAMPLE_POLICY = f"""
[identities."{APP}"]
methods = ["GetAccessToken", "WatchAccessToken"]
grants = ["my-grant-id"]
"""


@pytest.mark.slow
def test_readme_five_line_example_gets_a_token_in_a_clean_venv(
    venv: CleanVenv, tmp_path: Path
) -> None:
    (tmp_path / "broker").mkdir()
    service = tmp_path / "service"
    service.mkdir()
    example = five_line_example(README.read_text())
    (service / "example.py").write_text(example)
    expires_at = float(int(time.time()) + 3600)
    grant = dataclasses.replace(make_grant("my-grant-id", "crm"), access_expires_at=expires_at)
    with serve(
        tmp_path / "broker", policy_text=EXAMPLE_POLICY, server_names=("broker.internal",)
    ) as live:

        def add() -> None:
            live.broker.grants[grant.grant_id] = grant

        live.on_loop(add)
        files = live.files(APP)
        shutil.copy(files.ca, service / "broker-ca.pem")
        shutil.copy(files.cert, service / "me.pem")
        shutil.copy(files.key, service / "me-key.pem")
        # The README's target, broker.internal:50051, reaches the broker through a CONNECT
        # proxy: the code runs as written and TLS checks the name broker.internal.
        with ConnectProxy(("127.0.0.1", live.harness.port)) as proxy:
            ran = venv.run("example.py", cwd=service, grpc_proxy=proxy.url)
        calls = {(kind, grant_id) for kind, grant_id, _ in live.broker.calls}
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr and "Exception" not in ran.stderr, ran.stderr
    assert ran.stdout == f"{expires_at}\n"
    assert set(proxy.authorities) == {"broker.internal:50051"}
    assert calls & {("watch", "my-grant-id"), ("get_access_token", "my-grant-id")}
    assert "at-my-grant-id" not in ran.stdout + ran.stderr  # the secret is not printed
