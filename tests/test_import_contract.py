"""The package walls of ``broker`` (docs/design-notes.md, "Package walls"), checked from the
source with :mod:`ast`: every ``import`` and ``from ... import`` of every module, including those
inside functions and ``if TYPE_CHECKING:`` blocks.

(a) No import cycle between the top-level units of ``broker`` (a package such as ``tokens`` or a
    module such as ``config``). (b) Explicit rules: which unit may not import which. (c) Nothing
    in ``broker`` imports what is not shipped with it: the development tools (``devtools``: the
    local stack, the test peer's launcher, the demo), ``tests`` or ``bench``.

Each violation is printed as ``path:line: importer -> imported``. A violation that could not be
fixed yet is listed in :data:`ALLOWED` with its reason; an entry that no longer matches anything
fails the test too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "broker"
GENERATED = PACKAGE / "server" / "gen"

GRPC_MODULES = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "broker.server.gen")
"""Third-party gRPC and the generated stubs: only the units in GRPC_USERS import them."""

GRPC_USERS = frozenset({"server"})
"""``server`` (the adapter). The composition root (``app``) and the CLI reach gRPC only
through ``server``. (The development tools, gRPC clients of a running broker, live outside
``broker`` in the top-level ``devtools`` package.)"""

NOT_SHIPPED = ("devtools", "tests", "bench")
"""Top-level packages of the checkout that are not in the wheel: no ``broker`` module imports
them (the service would fail to import once installed)."""

GRPC_WIRING = frozenset({"app"})
"""The composition root starts the gRPC server: the one unit outside :data:`GRPC_USERS` that may
import a module of ``server`` that imports gRPC (``app.grpc_server``, ``app.running``)."""

GRPC_REACH = GRPC_USERS | GRPC_WIRING | {"cli"}
"""The units whose modules may load gRPC through their imports, however indirectly: the two
above and the ``broker`` command, whose ``serve`` imports the wiring when it runs, after quieting
gRPC C-core (tests/cli/test_cli_package.py). Any other unit (``doctor`` checking the policy file,
the TLS material and the AS client as serve would) uses only grpc-free modules of ``server`` and
``app`` (``server.policy``, ``server.certificates``, ``app.oauth``)."""

FORBIDDEN: dict[str, frozenset[str]] = {
    # the bottom: the exception tree, the clock, strict JSON
    "errors": frozenset({"*"}),
    "clock": frozenset({"*"}),
    "strict_json": frozenset({"*"}),
    # the one retry back-off rule: the exception tree only
    "backoff": frozenset(
        {"clock", "strict_json", "keys", "jose", "oauth", "credentials", "telemetry", "audit"}
        | {"tokens", "login", "config", "web", "server", "app", "cli", "doctor"}
    ),
    # key custody knows nothing of OAuth, tokens, logins or the adapters
    "keys": frozenset(
        {"oauth", "tokens", "login", "server", "web", "audit", "config", "app", "telemetry"}
    ),
    "jose": frozenset({"oauth", "tokens", "login", "server", "web", "audit", "config", "app"}),
    # oauth: stateless protocol verbs. It may use errors, clock, strict_json, jose, keys (api,
    # kid), credentials (the machine credential it presents) and telemetry (HTTP instruments).
    "oauth": frozenset(
        {"tokens", "login", "server", "web", "audit", "config", "app", "doctor", "ceremony"}
    ),
    "credentials": frozenset({"oauth", "tokens", "login", "server", "web", "config", "app"}),
    # telemetry sits below every domain package: it implements their observer ports
    # structurally and defines its own settings
    "telemetry": frozenset({"tokens", "oauth", "login", "server", "web", "audit", "config", "app"}),
    # config: schema and loading; the key URI and did:key checks are passed in by the wiring
    # (config.ports.KeyChecks, given by app.settings)
    "config": frozenset({"keys", "server", "login", "app", "audit"}),
    # the runtime trail and the log are written by tokens, login, server and the ceremonies
    "audit": frozenset({"tokens", "login", "server", "web", "oauth", "app", "config", "keys"}),
    # the token core: depends on oauth's value types and its own ports, never on an adapter
    "tokens": frozenset({"login", "server", "web", "app", "config", "doctor"}),
    # the login service: an application service below both listeners
    "login": frozenset({"server", "web", "app", "config"}),
    # the two adapters do not know each other
    "web": frozenset({"server", "app", "config"}),
    "server": frozenset({"web", "app", "config"}),
}
"""importer unit -> units it may not import (``"*"``: nothing from ``broker`` at all)."""

IMPORTED_ONLY_BY: dict[str, frozenset[str]] = {
    # the `broker` command tree is the top: it may import every unit, none imports it (the
    # development harness that runs the same command in-process, devtools.session_probe, is
    # outside broker)
    "cli": frozenset(),
}
"""imported unit -> the only units that may import it."""


@dataclass(frozen=True)
class Allowed:
    path: str  # relative to the repository root
    imported: str  # a dotted module name or a prefix of one
    reason: str


ALLOWED: tuple[Allowed, ...] = ()


@dataclass(frozen=True)
class Edge:
    path: str
    line: int
    importer: str  # dotted module
    imported: str  # dotted module

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} -> {self.imported}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import in ``path``, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), package, str(path))


def imports_in(source: str, package: str, filename: str) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import in ``source`` of a module in ``package``."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            targets = set()
            for alias in node.names:  # `from broker import strict_json` names a module
                sub = f"{base}.{alias.name}"
                targets.add(sub if is_module(sub) else base)
            for target in sorted(targets):
                yield node.lineno, target


def all_edges() -> list[Edge]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if GENERATED in path.parents:
            continue
        importer = module_name(path)
        rel = str(path.relative_to(ROOT))
        edges += [Edge(rel, line, importer, mod) for line, mod in imports_of(path)]
    return edges


def unit(dotted: str) -> str | None:
    """The top-level unit of a ``broker`` module (``None`` outside ``broker`` or for the root
    package itself, which holds only the version)."""
    parts = dotted.split(".")
    return parts[1] if parts[0] == "broker" and len(parts) > 1 else None


def allowed(edge: Edge) -> bool:
    return any(
        a.path == edge.path
        and (edge.imported == a.imported or edge.imported.startswith(a.imported + "."))
        for a in ALLOWED
    )


def is_grpc(dotted: str) -> bool:
    return dotted.partition(".")[0] in GRPC_MODULES or dotted.startswith("broker.server.gen")


def grpc_loaders(edges: list[Edge]) -> set[str]:
    """The ``broker`` modules that load gRPC when imported: those importing it, and those
    importing one of them, at any depth."""
    importers: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        importers[edge.imported].add(edge.importer)
    found = {e.importer for e in edges if is_grpc(e.imported)}
    todo = list(found)
    while todo:
        for importer in importers[todo.pop()] - found:
            found.add(importer)
            todo.append(importer)
    return found


def loads_grpc(dotted: str, loaders: set[str]) -> bool:
    """Importing ``dotted`` imports its parent packages too."""
    parts = dotted.split(".")
    return any(".".join(parts[:n]) in loaders for n in range(1, len(parts) + 1))


def grpc_reach_violations(edges: list[Edge]) -> list[Edge]:
    """Imports, from a unit outside :data:`GRPC_REACH`, of a ``broker`` module that loads gRPC
    (itself or through its own imports)."""
    loaders = grpc_loaders(edges)
    return [
        e
        for e in edges
        if unit(e.importer) not in GRPC_REACH | {None}
        and not is_grpc(e.imported)  # a direct import: rule_violations reports it
        and loads_grpc(e.imported, loaders)
    ]


def unshipped_imports(edges: list[Edge]) -> list[Edge]:
    """Imports of a top-level package of the checkout that the wheel does not hold."""
    return [e for e in edges if e.imported.partition(".")[0] in NOT_SHIPPED]


def rule_violations(edges: list[Edge]) -> list[Edge]:
    bad = []
    for edge in edges:
        src, dst = unit(edge.importer), unit(edge.imported)
        if src is None:
            continue
        if is_grpc(edge.imported):
            if src not in GRPC_USERS:
                bad.append(edge)
            continue
        if dst is None or dst == src:
            continue
        forbidden = FORBIDDEN.get(src, frozenset())
        importers = IMPORTED_ONLY_BY.get(dst)
        if "*" in forbidden or dst in forbidden or (importers is not None and src not in importers):
            bad.append(edge)
    return bad


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        src, dst = unit(edge.importer), unit(edge.imported)
        if src is not None and dst is not None and src != dst:
            graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def report(title: str, edges: list[Edge]) -> str:
    return title + "\n" + "\n".join(f"  {edge}" for edge in edges)


# --- the contract ---------------------------------------------------------------------------


def test_no_import_cycle_between_the_packages_of_broker() -> None:
    edges = [e for e in all_edges() if not allowed(e)]
    found = cycles(edges)
    lines = []
    for component in found:
        members = set(component)
        inside = [
            e
            for e in edges
            if unit(e.importer) in members
            and unit(e.imported) in members
            and unit(e.importer) != unit(e.imported)
        ]
        lines.append(report(f"cycle between {', '.join(component)}:", inside))
    assert not found, "\n".join(lines)


def test_package_rules_hold() -> None:
    bad = [e for e in rule_violations(all_edges()) if not allowed(e)]
    assert not bad, report("imports across a package wall (docs/design-notes.md):", bad)


def test_only_the_composition_root_and_the_cli_import_modules_that_load_grpc() -> None:
    bad = [e for e in grpc_reach_violations(all_edges()) if not allowed(e)]
    assert not bad, report("imports of a gRPC-loading module outside the wiring:", bad)


def test_broker_never_imports_the_development_tools_tests_or_bench() -> None:
    bad = unshipped_imports(all_edges())
    assert not bad, report("imports of a package the wheel does not ship:", bad)


def test_every_allowlist_entry_still_matches_an_import() -> None:
    edges = all_edges()
    stale = [
        a
        for a in ALLOWED
        if not any(
            e.path == a.path
            and (e.imported == a.imported or e.imported.startswith(a.imported + "."))
            for e in edges
        )
    ]
    assert not stale, f"allowlist entries that no longer match (remove them): {stale}"


# --- the checker itself ---------------------------------------------------------------------


def test_the_checker_sees_function_level_relative_and_from_package_imports() -> None:
    """The parser finds an import inside a function, a relative import and a module named in
    ``from broker import x``; the rules and the cycle finder flag them."""
    source = (
        "from broker import strict_json\n"
        "def f() -> None:\n"
        "    from broker.tokens.model import Grant\n"
        "    import grpc\n"
        "from . import types\n"
    )
    found = sorted(imports_in(source, "broker.oauth", "probe.py"))
    assert found == [
        (1, "broker.strict_json"),
        (3, "broker.tokens.model"),
        (4, "grpc"),
        (5, "broker.oauth.types"),
    ]
    edges = [
        Edge("broker/oauth/_contract_probe.py", line, "broker.oauth._p", m) for line, m in found
    ]
    assert [e.line for e in rule_violations(edges)] == [3, 4]
    up = Edge("broker/ceremony/x.py", 7, "broker.ceremony.x", "broker.cli.keys_audited")
    wiring = Edge("broker/app/wiring.py", 8, "broker.app.wiring", "broker.cli")
    assert rule_violations([up, wiring]) == [up, wiring]
    back = Edge("broker/tokens/x.py", 9, "broker.tokens.x", "broker.oauth.types")
    assert cycles([*edges, back]) == [["oauth", "tokens"]]


def test_the_checker_flags_an_import_of_devtools_tests_or_bench() -> None:
    found = sorted(
        imports_in(
            "from devtools.pki import Ca\n"
            "def f() -> None:\n"
            "    import devtools.stack\n"
            "    from tests.server import pki\n"
            "from broker.devtools_like import x\n",
            "broker.server",
            "probe.py",
        )
    )
    edges = [Edge("broker/server/probe.py", line, "broker.server.probe", m) for line, m in found]
    assert [e.line for e in unshipped_imports(edges)] == [1, 3, 4]


def test_the_checker_flags_a_module_that_imports_grpc_through_a_server_module() -> None:
    edges = [
        Edge("broker/server/tls.py", 1, "broker.server.tls", "grpc"),
        Edge("broker/server/certificates.py", 1, "broker.server.certificates", "cryptography"),
        Edge("broker/doctor/tls.py", 5, "broker.doctor.tls", "broker.server.certificates"),
        Edge("broker/doctor/tls.py", 6, "broker.doctor.tls", "broker.server.tls"),
        Edge("broker/app/grpc_server.py", 7, "broker.app.grpc_server", "broker.server.tls"),
    ]
    assert [str(e) for e in grpc_reach_violations(edges)] == [
        "broker/doctor/tls.py:6: broker.doctor.tls -> broker.server.tls"
    ]


def test_the_checker_flags_a_module_that_loads_grpc_through_the_composition_root() -> None:
    """Two hops: doctor -> the wiring -> the gRPC listener -> grpc (the doctor imported serve's
    client_config and http_client from the composition root and so loaded grpc); a package whose
    ``__init__`` loads gRPC counts for every module under it."""
    edges = [
        Edge("broker/server/tls.py", 1, "broker.server.tls", "grpc"),
        Edge("broker/app/grpc_server.py", 2, "broker.app.grpc_server", "broker.server.tls"),
        Edge("broker/app/wiring.py", 3, "broker.app.wiring", "broker.app.grpc_server"),
        Edge("broker/app/wiring.py", 4, "broker.app.wiring", "broker.app.oauth"),
        Edge("broker/cli/serve.py", 5, "broker.cli.serve", "broker.app.wiring"),
        Edge("broker/doctor/authserver.py", 6, "broker.doctor.authserver", "broker.app.oauth"),
        Edge("broker/doctor/runner.py", 7, "broker.doctor.runner", "broker.app.wiring"),
    ]
    assert [str(e) for e in grpc_reach_violations(edges)] == [
        "broker/doctor/runner.py:7: broker.doctor.runner -> broker.app.wiring"
    ]
    heavy_init = Edge("broker/app/__init__.py", 8, "broker.app", "broker.app.wiring")
    assert [e.line for e in grpc_reach_violations([*edges, heavy_init])] == [6, 7]
