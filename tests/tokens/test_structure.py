"""The token core stays in small modules of one concept (issue 11): no module of broker/tokens/
over 400 lines, no class holding more than 10 attributes, and the facade's settings grouped
(keyword-only, a handful) instead of a long list of keyword arguments."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from broker.tokens.broker import TokenBroker

TOKENS = Path(__file__).resolve().parents[2] / "broker" / "tokens"
MAX_LINES = 400
MAX_ATTRIBUTES = 10


def modules() -> list[Path]:
    return sorted(p for p in TOKENS.glob("*.py") if p.name != "__init__.py")


def test_no_token_core_module_is_over_400_lines() -> None:
    long = {p.name: n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def attributes_set_in_init(cls: ast.ClassDef) -> set[str]:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__init__":
            return {
                target.attr
                for sub in ast.walk(node)
                for target in (
                    sub.targets
                    if isinstance(sub, ast.Assign)
                    else [sub.target]
                    if isinstance(sub, ast.AnnAssign)
                    else []
                )
                if isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            }
    return set()


def test_no_token_core_class_holds_more_than_10_attributes() -> None:
    crowded = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                held = attributes_set_in_init(node)
                if len(held) > MAX_ATTRIBUTES:
                    crowded[f"{path.name}:{node.name}"] = sorted(held)
    assert crowded == {}


def test_the_facade_takes_grouped_keyword_only_settings() -> None:
    params = list(inspect.signature(TokenBroker.__init__).parameters.values())[1:]
    positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert positional == ["store", "refresher", "clock"]
    assert len(params) <= 12
