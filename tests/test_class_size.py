"""Issue 11's rule "no class with more than ~8 collaborators", checked from the source with
:mod:`ast` over every class of ``broker`` (the generated gRPC code aside).

A class's collaborators are counted as the parameters of its ``__init__`` (``self`` excluded,
positional and keyword-only alike, tuning knobs included: a constructor that takes twelve things
is hard to call and to test whatever their types). A dataclass without its own ``__init__``
counts its init fields, except a *frozen* one: a frozen dataclass is a value (a grant, a row, a
settings section, a wire document) whose fields are data it holds, not parts it works with, and
its width follows the format it models. Classes with neither (protocols, enums, named tuples,
exceptions without ``__init__``) have nothing to count.

A class over :data:`MAX_COLLABORATORS` that stays so for a reason is listed in :data:`ALLOWED`
with its count and the reason; it fails again if it grows, and an entry that no longer matches a
class over the limit fails too (the list only shrinks).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "broker"
GENERATED = PACKAGE / "server" / "gen"

MAX_COLLABORATORS = 8


@dataclass(frozen=True)
class Allowed:
    where: str  # path relative to the repository root, "::", class name
    count: int  # the most it may take
    reason: str


ALLOWED: tuple[Allowed, ...] = (
    Allowed(
        "broker/tokens/broker.py::TokenBroker",
        12,
        "the token core's facade: 3 ports (store, refresher, clock), the rest keyword-only and "
        "defaulted, already grouped (RefreshPolicy, BackgroundPolicy, Reporting, Identities, "
        "Seams); folding further would bundle unrelated optional parts",
    ),
    Allowed(
        "broker/oauth/client.py::OAuthClient",
        9,
        "4 collaborators (config, http, signer, clock), its ClientTimings (cache lifetimes, gate "
        "wait), its ClientReporting (tracer provider, AS-error observer) and 3 defaulted seams: "
        "the retry back-off's sleep and jitter (the token endpoint's own parameters, passed "
        "through) and the skew monitor (not reporting only: it moves the assertions' clock)",
    ),
    Allowed(
        "broker/tokens/core.py::Serving",
        10,
        "built in one place (TokenBroker) from the token core's own parts; a parameter object "
        "would add an attribute hop on the serving hot path",
    ),
    Allowed(
        "broker/cli/keys_audited.py::Facts",
        10,
        "a mutable record a key ceremony fills in as it learns the key (built empty, every field "
        "defaulted): 7 of its fields are what the audit record will say, 3 are collaborators",
    ),
    Allowed(
        "broker/tokens/stores/postgres.py::PostgresGrantStore",
        9,
        "3 collaborators (sealer, clock, due rule); the others are [store]'s connection options "
        "(dsn, schema, pool size, connect timeout) and the deployment binding",
    ),
)


@dataclass(frozen=True)
class Wide:
    where: str
    line: int
    count: int

    def __str__(self) -> str:
        return f"{self.where} (line {self.line}): {self.count}"


def _is_dataclass(decorator: ast.expr) -> tuple[bool, bool]:
    """(is a ``@dataclass`` decorator, with ``frozen=True``)."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    if name != "dataclass":
        return False, False
    frozen = isinstance(decorator, ast.Call) and any(
        k.arg == "frozen" and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in decorator.keywords
    )
    return True, frozen


def _init_field(statement: ast.stmt) -> bool:
    """An annotated field of a dataclass that its ``__init__`` takes."""
    if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
        return False
    if "ClassVar" in ast.unparse(statement.annotation):
        return False
    value = statement.value
    if isinstance(value, ast.Call) and ast.unparse(value.func).endswith("field"):
        return not any(
            k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False
            for k in value.keywords
        )
    return True


def collaborators(node: ast.ClassDef) -> int | None:
    """What the class's constructor takes, or None when there is nothing to count."""
    for statement in node.body:
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef) and (
            statement.name == "__init__"
        ):
            args = statement.args
            return len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs) - 1
    for decorator in node.decorator_list:
        is_dataclass, frozen = _is_dataclass(decorator)
        if is_dataclass:
            return None if frozen else sum(_init_field(s) for s in node.body)
    return None


def classes_in(source: str, filename: str) -> Iterator[tuple[str, int, int]]:
    """(class name, line, collaborators) of every class in ``source`` that has a count."""
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.ClassDef):
            count = collaborators(node)
            if count is not None:
                yield node.name, node.lineno, count


def wide_classes() -> list[Wide]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if GENERATED in path.parents:
            continue
        rel = str(path.relative_to(ROOT))
        for name, line, count in classes_in(path.read_text(encoding="utf-8"), rel):
            if count > MAX_COLLABORATORS:
                found.append(Wide(f"{rel}::{name}", line, count))
    return found


# --- the rule -------------------------------------------------------------------------------


def test_no_class_takes_more_than_eight_collaborators() -> None:
    limits = {a.where: a.count for a in ALLOWED}
    bad = [w for w in wide_classes() if w.count > limits.get(w.where, MAX_COLLABORATORS)]
    assert not bad, (
        f"classes taking more than {MAX_COLLABORATORS} collaborators (group them into "
        "parameter objects, or list the class in ALLOWED with a reason):\n"
        + "\n".join(f"  {w}" for w in bad)
    )


def test_every_exception_is_still_over_the_limit() -> None:
    wide = {w.where for w in wide_classes()}
    stale = [a.where for a in ALLOWED if a.where not in wide]
    assert not stale, f"ALLOWED entries no longer over the limit (remove them): {stale}"


# --- the checker itself ---------------------------------------------------------------------


def test_the_checker_counts_constructors_and_mutable_dataclasses() -> None:
    source = (
        "from dataclasses import dataclass, field\n"
        "class Wide:\n"
        "    def __init__(self, a, b, c, d, e, f, /, g, h, *, i, j, k, l): ...\n"
        "class Narrow:\n"
        "    def __init__(self, a, *, b): ...\n"
        "@dataclass\n"
        "class Parts:\n"
        "    a: int\n"
        "    b: int = field(default=0, init=False)\n"
        "    c: 'ClassVar[int]' = 0\n"
        "    d: str = ''\n"
        "@dataclass(frozen=True)\n"
        "class Row:\n"
        "    a: int\n"
        "class Port:\n"
        "    def method(self, a, b, c, d, e, f, g, h, i) -> None: ...\n"
    )
    assert sorted(classes_in(source, "probe.py")) == [
        ("Narrow", 4, 2),
        ("Parts", 7, 2),
        ("Wide", 2, 12),
    ]
