"""Log events are sentences ("host id acquired"), in every package: not snake_case names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"}
SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")


def snake_events(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else None
        if name is None and isinstance(func, ast.Call):  # getattr(log, level)("event")
            inner = func.func
            name = "msg" if isinstance(inner, ast.Name) and inner.id == "getattr" else None
        first = node.args[0]
        if (name in LEVELS and isinstance(first, ast.Constant) and isinstance(first.value, str)
                and SNAKE.fullmatch(first.value)):
            found.append(f"line {node.lineno}: {first.value!r}")
    return found


def test_the_check_sees_snake_case_events() -> None:
    assert snake_events('log.info("spm_term_started", lver=1)\n') == [
        "line 1: 'spm_term_started'"]
    assert snake_events('getattr(log, level)("renewal_failed")\n') == [
        "line 1: 'renewal_failed'"]
    assert snake_events('log.info("SPM term started", lver=1)\n') == []


def test_no_package_logs_snake_case_events() -> None:
    found = []
    for path in sorted((ROOT / "autoextend").rglob("*.py")):
        for hit in snake_events(path.read_text()):
            found.append(f"{path.relative_to(ROOT)} {hit}")
    assert found == []
