"""The import contract between the layers, checked by parsing every module's imports.

- ``autoextend/monitor/`` imports no backend package (``lvm``, ``spm``, ``lease``, ``qmp``,
  ``libvirt_backend``): the shared types live in neutral modules (``autoextend.volumes``).
- Production code never imports the lab, the simulator or the tests (only the lab's own CLI
  front-ends import ``autoextend.lab``).
- Benchmarks do not import ``tests``.
- No test module (``test_*.py``) imports another test module (shared helpers live in
  non-test modules such as ``tests/spm/pool.py`` or in conftest fixtures).
- No test class subclasses a production class (protocols, abstract bases and exceptions
  aside): fakes are compositions or implement the protocol.
- Every fixed sleep in the tests carries a comment: tests wait for events (``until()``, the
  monitor's ``idle()``), and sleep only where time itself is the subject.
- The monitor is made of objects, not of a class split across files: no function in
  ``autoextend/monitor/`` is over 60 lines, and no class there is more than one base deep
  (a class whose base is itself a monitor class with a base would be a chain).
- No import cycle among product modules, counting every import (function-local and
  ``TYPE_CHECKING`` ones too: a local import that steps around a cycle is still one) and the
  package ``__init__`` that importing a submodule runs first.
- The neutral modules (:data:`NEUTRAL`: shared types and vocabulary) import only each other;
  ``autoextend/lvm/`` imports nothing from the product but itself and them.
- Config is loaded once at the top: only the service, the CLI and the lab import
  ``autoextend.settings`` (the loader); below them, code gets its sections (or the whole
  typed value, ``autoextend.config.Settings``, where a rule spans sections).
- No switch can turn a safety check off from outside: the checks a simulation mutant or a
  negative control may turn off are one frozen value (``autoextend/checks.py: Checks``)
  given at construction. No class in ``autoextend/`` binds a switch's name at class level
  (field, attribute, property) but ``Checks``; no class there binds a bool outside a
  dataclass or config field; no product module builds a ``Checks`` with anything off; and
  ``sim/`` and ``tests/`` never set an attribute on a product class (no builtin ``setattr``
  at all: its target cannot be checked).
- What every implementation has is on the protocol (``Hypervisor.migration``/``health``,
  ``VolumeBackend.reduce``/``holders_paths``): at most 5 ``isinstance`` probes for an
  optional capability (a runtime-checkable protocol) are left in ``autoextend/``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BACKENDS = ("autoextend.lvm", "autoextend.spm", "autoextend.lease", "autoextend.qmp",
            "autoextend.libvirt_backend")
NOT_PRODUCTION = ("autoextend.lab", "sim", "tests", "bench")
# The ``autoextend lab`` and ``autoextend demo`` commands front the lab itself.
# Shared types and vocabulary every layer may import: they import only each other.
NEUTRAL = ("autoextend.backoff", "autoextend.boundedjson", "autoextend.clock",
           "autoextend.confbase", "autoextend.errors", "autoextend.logs",
           "autoextend.metadata_area", "autoextend.names", "autoextend.sectors",
           "autoextend.volumes")
# The loader's only importers: what sits above service.py (the CLI, the lab) and service.py.
SETTINGS_IMPORTERS = ("autoextend.service", "autoextend.cli", "autoextend.lab")
LAB_FRONT_ENDS = {"autoextend/cli/lab.py": "autoextend.lab", "autoextend/cli/service.py":
                  "autoextend.lab"}


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse``, once per text: the rules below walk the same product files many times,
    and only read the trees they get. ``filename`` only names the file in a syntax error, so
    it is not part of the cache's key (rules that name a file differently share its tree)."""
    try:
        return _parse(source)
    except SyntaxError:
        return ast.parse(source, filename)  # raises again, naming the file


@functools.cache
def _parse(source: str) -> ast.Module:
    return ast.parse(source)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved), anywhere in
    the file (function-local and ``TYPE_CHECKING`` imports included)."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    package = module.split(".")
    if not is_package:
        package.pop()
    out: set[str] = set()
    for node in ast.walk(parse(source, module)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{alias.name}" for alias in node.names)
    return out


def under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def violations(files: list[Path], forbidden: tuple[str, ...],
               allowed: dict[str, str] | None = None) -> list[str]:
    sources = {p.relative_to(ROOT).as_posix(): p.read_text() for p in files}
    return violations_in(sources, forbidden, allowed)


def violations_in(sources: dict[str, str], forbidden: tuple[str, ...],
                  allowed: dict[str, str] | None = None) -> list[str]:
    """``sources``: module text by path relative to the repository root."""
    found = []
    for rel, text in sources.items():
        path = ROOT / rel
        names = imports_in(text, module_name(path), path.name == "__init__.py")
        for name in sorted(names):
            if under(name, forbidden) and not (allowed and under(name, (allowed.get(rel, "-"),))):
                found.append(f"{rel} imports {name}")
    return found


def py_files(folder: str) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no modules under {folder}"
    return files


def test_the_parser_sees_relative_local_and_package_imports() -> None:
    """A contract that cannot see an import cannot fail: check what the parser finds."""
    local = "def f():\n    from autoextend.lvm import factory\n"
    assert "autoextend.lvm.factory" in imports_in(local, "autoextend.monitor.x")
    relative = "from ..lvm.names import parse\nfrom . import core\n"
    found = imports_in(relative, "autoextend.monitor.x")
    assert {"autoextend.lvm.names", "autoextend.monitor.core"} <= found
    assert "autoextend.qmp" in imports_in("from .. import qmp\n", "autoextend.monitor", True)
    assert "tests.spm.test_mailbox" in imports_in("from .test_mailbox import X\n",
                                                  "tests.spm.test_hostile")
    assert violations_in({"autoextend/monitor/x.py": "import autoextend.spm.wire\n"},
                         BACKENDS) == ["autoextend/monitor/x.py imports autoextend.spm.wire"]
    assert module_name(ROOT / "autoextend" / "monitor" / "__init__.py") == "autoextend.monitor"


def test_monitor_imports_no_backend() -> None:
    assert violations(py_files("autoextend/monitor"), BACKENDS) == []


def test_production_code_imports_no_lab_sim_or_tests() -> None:
    production = [p for p in py_files("autoextend") if "lab" not in p.relative_to(ROOT).parts]
    assert violations(production, NOT_PRODUCTION, LAB_FRONT_ENDS) == []


def test_the_lab_imports_no_sim_or_tests() -> None:
    assert violations(py_files("autoextend/lab"), ("sim", "tests", "bench")) == []


def test_benchmarks_do_not_import_tests() -> None:
    assert violations(py_files("bench"), ("tests",)) == []


def test_no_test_module_imports_another_test_module() -> None:
    found = []
    for path in py_files("tests"):
        rel = path.relative_to(ROOT).as_posix()
        for name in sorted(imports_of(path)):
            if name.split(".")[0] == "tests" and name.split(".")[-1].startswith("test_"):
                found.append(f"{rel} imports {name}")
    assert found == []


# ---- tests wait for events, not time ----------------------------------------------------------

SLEEP = re.compile(r"\b(?:anyio|asyncio|time|trio)\.sleep\(")


def uncommented_sleeps(text: str) -> list[int]:
    """Lines with a fixed sleep and no comment on it or on the line above (a sleep stays only
    where time itself is the subject, and says so)."""
    lines = text.splitlines()
    return [i + 1 for i, line in enumerate(lines)
            if SLEEP.search(line) and "#" not in line
            and not (i and lines[i - 1].strip().startswith("#"))]


def test_the_sleep_check_sees_a_bare_sleep() -> None:
    # a bare sleep, in a string:
    assert uncommented_sleeps("    await anyio.sleep(0.05)\n") == [1]
    assert uncommented_sleeps("    time.sleep(1)  # time is the subject: ...\n") == []
    assert uncommented_sleeps("    # the window\n    await anyio.sleep(3)\n") == []
    assert uncommented_sleeps("    await anyio.sleep_forever()\n    await clock.sleep(1)\n") == []


def test_every_sleep_in_the_tests_says_why() -> None:
    found = [f"{path.relative_to(ROOT)}:{n}" for path in py_files("tests")
             for n in uncommented_sleeps(path.read_text())]
    assert found == []


def production_bases(path: Path) -> list[tuple[str, str]]:
    """(class, base) for each class in ``path`` whose base is imported from ``autoextend``."""
    tree = parse(path.read_text())
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                full = imported.get(ast.unparse(base), "")
                if full.startswith("autoextend.") and not full.startswith("autoextend.lab."):
                    found.append((node.name, full))
    return found


def is_interface(qualname: str) -> bool:
    """A Protocol, an abstract base or an exception: made to be subclassed."""
    module, _, name = qualname.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return (bool(getattr(cls, "_is_protocol", False)) or inspect.isabstract(cls)
            or issubclass(cls, BaseException))


def test_no_test_subclasses_a_production_class() -> None:
    """Fakes are compositions or implement the boundary's protocol; a subclass of a real
    class would drift with it silently (vdsm's habit to avoid, see the style notes)."""
    found = [f"{path.relative_to(ROOT)}: {cls}({base})" for path in py_files("tests")
             for cls, base in production_bases(path) if not is_interface(base)]
    assert found == []


# ---- the monitor's shape: small functions, no class chains ------------------------------------

MAX_FUNCTION_LINES = 60
MAX_CLASS_CHAIN = 1


def long_functions(sources: dict[str, str], limit: int) -> list[str]:
    """``path:line name: N lines`` for every function (method, nested function) longer than
    ``limit`` lines, from its ``def`` line to its last line."""
    found = []
    for rel, text in sources.items():
        for node in ast.walk(parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{rel}:{node.lineno} {node.name}: {lines} lines")
    return found


def class_chains(sources: dict[str, str]) -> dict[str, int]:
    """How many bases deep each class in ``sources`` goes: 0 with no base, 1 with bases from
    elsewhere only (``Protocol``, an exception), 1 + its base's depth for a base defined in
    ``sources`` (classes are matched by name)."""
    bases: dict[str, list[str]] = {}
    for text in sources.values():
        for node in ast.walk(parse(text)):
            if isinstance(node, ast.ClassDef):
                bases[node.name] = [ast.unparse(b).split("[")[0].rpartition(".")[2]
                                    for b in node.bases]

    def depth(name: str, seen: frozenset[str]) -> int:
        own = bases.get(name, [])
        if not own:
            return 0
        return 1 + max(depth(b, seen | {name}) if b in bases and b not in seen else 0
                       for b in own)

    return {name: depth(name, frozenset()) for name in bases}


def monitor_sources() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in py_files("autoextend/monitor")}


def test_the_shape_checks_see_a_long_function_and_a_chain() -> None:
    """A check that cannot see what it forbids cannot fail: the old monitor's shape."""
    chain = ("class A:\n    pass\nclass B(A):\n    pass\nclass C(B):\n    pass\n"
             "class P(typing.Protocol):\n    pass\nclass E(AutoextendError):\n    pass\n")
    assert class_chains({"m.py": chain}) == {"A": 0, "B": 1, "C": 2, "P": 1, "E": 1}
    long = "async def f() -> None:\n" + "    x = 1\n" * 60
    assert long_functions({"m.py": long}, 60) == ["m.py:1 f: 61 lines"]
    assert long_functions({"m.py": long}, 61) == []


def test_no_monitor_function_is_over_60_lines() -> None:
    assert long_functions(monitor_sources(), MAX_FUNCTION_LINES) == []


def test_no_monitor_class_is_more_than_one_base_deep() -> None:
    deep = {name: n for name, n in class_chains(monitor_sources()).items()
            if n > MAX_CLASS_CHAIN}
    assert deep == {}


# ---- the mailbox's two ends stay small (issue 26) ------------------------------------------

MAX_MAILBOX_END_LINES = 350
MAILBOX_ENDS = ("autoextend/spm/server.py", "autoextend/spm/host.py")


def long_files(sources: dict[str, str], limit: int) -> list[str]:
    """``path: N lines`` for every file in ``sources`` of ``limit`` lines or more."""
    return [f"{rel}: {len(text.splitlines())} lines" for rel, text in sources.items()
            if len(text.splitlines()) >= limit]


def test_the_length_check_sees_a_long_file() -> None:
    assert long_files({"m.py": "x = 1\n" * 350}, 350) == ["m.py: 350 lines"]
    assert long_files({"m.py": "x = 1\n" * 349}, 350) == []


def test_the_spm_server_and_the_host_mailbox_stay_under_350_lines() -> None:
    """They were 455 and 480 lines; the seams they were split along are modules of their
    own (replybox, execute, slots, pending, hostio): the next growth goes there too."""
    sources = {rel: (ROOT / rel).read_text() for rel in MAILBOX_ENDS}
    assert long_files(sources, MAX_MAILBOX_END_LINES) == []


def manual_lock_calls(sources: dict[str, str]) -> list[str]:
    """``path:line call`` for every ``x.acquire()`` / ``x.release()`` call in ``sources``
    (a lock taken by hand instead of with ``async with``)."""
    found = []
    for rel, text in sources.items():
        for node in ast.walk(parse(text)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("acquire", "release")):
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return sorted(found)


def test_the_lock_check_sees_a_lock_taken_by_hand() -> None:
    source = "async def f(lock):\n    await lock.acquire()\n    lock.release()\n"
    assert manual_lock_calls({"m.py": source}) == ["m.py:2 lock.acquire()",
                                                   "m.py:3 lock.release()"]
    assert manual_lock_calls({"m.py": "async def f(lock):\n    async with lock:\n"
                                      "        pass\n"}) == []


def test_the_mailbox_takes_every_lock_with_async_with() -> None:
    assert manual_lock_calls(sources_of("autoextend/spm")) == []


# ---- the module graph: no cycles, neutral vocabulary, config loaded at the top ---------------


def product_modules() -> dict[str, Path]:
    return {module_name(p): p for p in py_files("autoextend")}


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the product modules it imports (every import in the file), with the packages
    whose ``__init__`` the import runs first; ``sources``: (text, is_package) by module. A
    module's own ancestor packages are left out (they are imported before it anyway)."""
    def known(name: str) -> str | None:
        while name and name not in sources:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (text, is_package) in sources.items():
        edges: set[str] = set()
        for name in imports_in(text, module, is_package):
            target = known(name)
            while target is not None:
                if target != module and not module.startswith(target + "."):
                    edges.add(target)
                target = known(target.rpartition(".")[0])
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected parts of two or more modules
    (Tarjan's algorithm, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                part = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    part.append(member)
                    if member == node:
                        break
                if len(part) > 1:
                    found.append(sorted(part))
    return found


def test_the_cycle_check_sees_local_typing_and_package_cycles() -> None:
    local = {"p.a": ("def f():\n    from p import b\n", False), "p.b": ("import p.a\n", False),
             "p": ("", True)}
    assert cycles(import_graph(local)) == [["p.a", "p.b"]]
    typing = {"p.a": ("if TYPE_CHECKING:\n    from p.b import X\n", False),
              "p.b": ("from p.a import Y\n", False), "p": ("", True)}
    assert cycles(import_graph(typing)) == [["p.a", "p.b"]]
    # importing q.x runs q/__init__, which imports p.a: a cycle through a package
    package = {"p.a": ("from q.x import Z\n", False), "q": ("from p.a import W\n", True),
               "q.x": ("", False), "p": ("", True)}
    assert cycles(import_graph(package)) == [["p.a", "q"]]
    # a package importing its own submodules is not a cycle
    own = {"q": ("from q.x import Z\n", True), "q.x": ("from q import y\n", False),
           "q.y": ("", False)}
    assert cycles(import_graph(own)) == []


def test_no_import_cycle_among_product_modules() -> None:
    sources = {m: (p.read_text(), p.name == "__init__.py") for m, p in product_modules().items()}
    assert cycles(import_graph(sources)) == []


def allowed(violation: str, packages: tuple[str, ...]) -> bool:
    """``violation`` ("path imports name") names one of ``packages``, or the bare
    ``autoextend`` package (``from autoextend import names``: its ``__init__`` is a docstring)."""
    name = violation.split()[-1]
    return name == "autoextend" or under(name, packages)


def test_neutral_modules_import_only_each_other() -> None:
    modules = product_modules()
    for name in NEUTRAL:
        assert name in modules, f"{name} is listed as neutral but does not exist"
    neutral = [modules[name] for name in NEUTRAL]
    found = [v for v in violations(neutral, ("autoextend",)) if not allowed(v, NEUTRAL)]
    assert found == []


def test_lvm_imports_nothing_above_the_neutral_types() -> None:
    found = [v for v in violations(py_files("autoextend/lvm"), ("autoextend",))
             if not allowed(v, ("autoextend.lvm", *NEUTRAL))]
    assert found == []


def test_nothing_below_the_service_imports_the_settings_loader() -> None:
    below = [p for m, p in product_modules().items() if not under(m, SETTINGS_IMPORTERS)]
    assert violations(below, ("autoextend.settings",)) == []


# ---- no switch that turns a safety check off from outside ---------------------------------

# The names the safety switches had as class attributes before they became Checks fields.
OLD_SWITCHES = frozenset({"enforce", "fresh_owner_read", "match_generation", "protect_views"})
# A bool class attribute that a library reads from the class (pyfuse3's Operations).
BOOL_CLASS_ATTRIBUTES = {"autoextend/lab/faultfs.py: FaultOps.use_ns"}


def switch_names() -> frozenset[str]:
    from autoextend.checks import Checks

    return OLD_SWITCHES | {f.name for f in dataclasses.fields(Checks)}


def _is_dataclass(node: ast.ClassDef) -> bool:
    for deco in node.decorator_list:
        target = deco.func if isinstance(deco, ast.Call) else deco
        if ast.unparse(target) in ("dataclass", "dataclasses.dataclass"):
            return True
    return False


def _bound_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    if isinstance(stmt, ast.AnnAssign | ast.AugAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
        return [stmt.name]
    return []


def class_switches(sources: dict[str, str], names: frozenset[str]) -> list[str]:
    """``path: Class.name`` for every class-level binding in ``sources`` that could be a
    switch: a name of ``names`` (leading underscores aside; attribute, field, property or
    method) in any class but ``autoextend/checks.py``'s ``Checks``; or a bool bound in the
    body of a class that is neither a dataclass nor a config ``Section`` (whose fields are
    set per instance, at construction)."""
    found = []
    for rel, text in sources.items():
        for node in ast.walk(parse(text)):
            if not isinstance(node, ast.ClassDef):
                continue
            fields = _is_dataclass(node) or any(ast.unparse(b) == "Section" for b in node.bases)
            for stmt in node.body:
                for name in _bound_names(stmt):
                    where = f"{rel}: {node.name}.{name}"
                    named = name.lstrip("_") in names
                    if named and not (rel == "autoextend/checks.py" and node.name == "Checks"):
                        found.append(where)
                    value = getattr(stmt, "value", None)
                    if (not named and not fields and isinstance(value, ast.Constant)
                            and isinstance(value.value, bool)
                            and where not in BOOL_CLASS_ATTRIBUTES):
                        found.append(where)
    return found


def checks_turned_off(sources: dict[str, str]) -> list[str]:
    """``path:line`` for every ``Checks(...)`` built with an argument, or ``replace()`` of a
    checks value, in ``sources``: only sim/ and tests/ may turn a check off."""
    found = []
    for rel, text in sources.items():
        for node in ast.walk(parse(text)):
            if not isinstance(node, ast.Call):
                continue
            func = ast.unparse(node.func)
            if func.rpartition(".")[2] == "Checks" and (node.args or node.keywords):
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
            elif (func.rpartition(".")[2] == "replace" and node.args
                  and re.search(r"checks|ALL_ON", ast.unparse(node.args[0]), re.I)):
                found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return found


def _imported_names(tree: ast.AST) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0])
    return names


def _product_class(expr: ast.expr, imported: dict[str, str]) -> str | None:
    """The qualified name of the ``autoextend`` class ``expr`` (a dotted name) denotes, if
    it does."""
    dotted = ast.unparse(expr)
    head, _, rest = dotted.partition(".")
    if head not in imported or not re.fullmatch(r"[\w.]+", dotted):
        return None
    full = imported[head] + (f".{rest}" if rest else "")
    if not full.startswith("autoextend."):
        return None
    parts = full.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return full if inspect.isclass(obj) else None
    return None


def product_class_patches(sources: dict[str, str]) -> list[str]:
    """``path:line`` for every builtin ``setattr``/``delattr`` call in ``sources``, every
    ``x.setattr``/``x.delattr`` (monkeypatch) on an ``autoextend`` class, and every
    assignment to or deletion of an attribute of one."""
    found = []
    for rel, text in sources.items():
        tree = parse(text)
        imported = _imported_names(tree)
        for node in ast.walk(tree):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name) and func.id in ("setattr", "delattr"):
                    found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
                    continue
                if (isinstance(func, ast.Attribute) and func.attr in ("setattr", "delattr")
                        and node.args):
                    targets = [node.args[0]]
            elif isinstance(node, ast.Assign | ast.Delete):
                targets = [t.value for t in node.targets if isinstance(t, ast.Attribute)]
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                if isinstance(node.target, ast.Attribute):
                    targets = [node.target.value]
            if any(_product_class(t, imported) for t in targets):
                found.append(f"{rel}:{getattr(node, 'lineno', 0)} {ast.unparse(node)}")
    return found


def sources_of(*folders: str) -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text()
            for folder in folders for p in py_files(folder)}


def test_the_switch_checks_see_the_old_switches() -> None:
    """The four switches as they were (issue 26), and what stays allowed."""
    names = switch_names()
    old_term = "class Term:\n    _enforce = True\n"
    old_context = ("@dataclass\nclass MonitorContext:\n    protect_views: bool = True\n"
                   "class Monitor:\n    @property\n    def protect_views(self) -> bool: ...\n")
    plain_bool = "class Mailbox:\n    _strict = True\n"
    allowed = ("@dataclass(frozen=True)\nclass Gates:\n    dry_run: bool = False\n"
               "class S(Section):\n    enabled: bool = True\n")
    checks = "@dataclass(frozen=True)\nclass Checks:\n    term_check: bool = True\n"
    assert class_switches({"a.py": old_term, "b.py": old_context, "c.py": plain_bool,
                           "d.py": allowed, "autoextend/checks.py": checks}, names) == [
        "a.py: Term._enforce", "b.py: MonitorContext.protect_views",
        "b.py: Monitor.protect_views", "c.py: Mailbox._strict"]
    assert class_switches({"e.py": checks}, names) == ["e.py: Checks.term_check"]
    built = ("x = Checks(term_check=False)\ny = dataclasses.replace(ALL_ON, term_check=False)\n"
             "z = Checks()\nw = dataclasses.replace(info, physical=1)\n")
    assert checks_turned_off({"m.py": built}) == [
        "m.py:1 Checks(term_check=False)", "m.py:2 dataclasses.replace(ALL_ON, term_check=False)"]
    old_sim = ("from autoextend.lease.service import LeaseService\n"
               "import autoextend.spm.host as host\nfrom autoextend import settings\n"
               "setattr(target, attr, False)\nLeaseService._fresh_owner_read = False\n"
               "host.HostMailbox._match_generation = False\n"
               "monkeypatch.setattr(LeaseService, 'x', 1)\n"
               "monkeypatch.setattr(settings, 'DEFAULT_CONFIG_PATH', 'p')\n"
               "settings.DEFAULT_CONFIG_PATH = 'p'\nobj.attr = 1\n")
    assert sorted(f.split()[0] for f in product_class_patches({"s.py": old_sim})) == [
        "s.py:4", "s.py:5", "s.py:6", "s.py:7"]


def test_no_class_attribute_can_switch_a_safety_check_off() -> None:
    assert class_switches(sources_of("autoextend"), switch_names()) == []


def test_only_the_simulation_and_tests_turn_a_check_off() -> None:
    assert checks_turned_off(sources_of("autoextend")) == []


def test_sim_and_tests_never_patch_a_product_class() -> None:
    assert product_class_patches(sources_of("sim", "tests")) == []


# ---- capabilities every implementation has are on the protocol ----------------------------

MAX_CAPABILITY_PROBES = 5


def capability_probes(sources: dict[str, str]) -> list[str]:
    """``path:line isinstance(...)`` for every ``isinstance(x, P)`` in ``sources`` where
    ``P`` (or one member of a tuple) is a ``@runtime_checkable`` class defined in
    ``sources`` (an optional capability, asked at run time)."""
    trees = {rel: parse(text) for rel, text in sources.items()}
    protocols = {node.name for tree in trees.values() for node in ast.walk(tree)
                 if isinstance(node, ast.ClassDef) and any(
                     ast.unparse(d).rpartition(".")[2] == "runtime_checkable"
                     for d in node.decorator_list)}
    found = []
    for rel, tree in trees.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "isinstance" and len(node.args) == 2):
                kinds = node.args[1]
                members = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
                if any(ast.unparse(m).rpartition(".")[2] in protocols for m in members):
                    found.append(f"{rel}:{node.lineno} {ast.unparse(node)}")
    return sorted(found)


def test_the_probe_count_sees_a_probe() -> None:
    source = ("@typing.runtime_checkable\nclass Reduces(Protocol):\n    pass\n"
              "class Plain:\n    pass\n"
              "def f(b):\n    return isinstance(b, Reduces), isinstance(b, Plain), "
              "isinstance(b, (int, volumes.Reduces))\n")
    assert capability_probes({"m.py": source}) == [
        "m.py:7 isinstance(b, (int, volumes.Reduces))", "m.py:7 isinstance(b, Reduces)"]


def test_at_most_five_capability_probes() -> None:
    probes = capability_probes(sources_of("autoextend"))
    assert len(probes) <= MAX_CAPABILITY_PROBES, "\n".join(probes)


# ---- no Any at a seam of capacity/ ---------------------------------------------------------

# A JSON payload (the control socket's requests and answers, ``status``): ``dict[str, Any]``
# or ``Mapping[str, Any]``, or a list or sequence of them, optionally ``| None``.
PAYLOADS = ("dict", "Mapping")
PAYLOAD_LISTS = ("list", "Sequence")


def _is_any(node: ast.expr) -> bool:
    return ast.unparse(node) in ("Any", "typing.Any", "t.Any")


def _is_payload(node: ast.expr) -> bool:
    """``node`` is a JSON payload type: ``dict[str, Any]`` / ``Mapping[str, Any]``, a
    ``list`` / ``Sequence`` of those, or one of those ``| None``."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        sides = (node.left, node.right)
        return (any(ast.unparse(s) == "None" for s in sides)
                and all(ast.unparse(s) == "None" or _is_payload(s) for s in sides))
    if not isinstance(node, ast.Subscript):
        return False
    name = ast.unparse(node.value).rpartition(".")[2]
    args = node.slice
    if name in PAYLOADS and isinstance(args, ast.Tuple) and len(args.elts) == 2:
        return ast.unparse(args.elts[0]) == "str" and _is_any(args.elts[1])
    return name in PAYLOAD_LISTS and _is_payload(args)


def _annotation(node: ast.expr) -> ast.expr:
    """The annotation as an expression (a quoted one parsed)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return ast.parse(node.value, mode="eval").body
    return node


def any_seams(sources: dict[str, str]) -> list[str]:
    """``path:line what: annotation`` for every annotation in ``sources`` that mentions
    ``Any`` and is not a JSON payload (:func:`_is_payload`): function parameters (``*args``,
    ``**kwargs`` and lambdas' none included), return types, and annotated assignments
    (``self.x: T = ...``, class fields, module variables). Strict on purpose: ``Any`` inside
    anything else (``Callable[[], list[dict[str, Any]]]``, ``list[Any]``, ``Iterator[Any]``)
    is a collaborator or a value whose type is unknown, and a collaborator is a Protocol or a
    concrete type. An alias of ``Any`` (``from typing import Any as A``, ``A = Any``) is
    refused outright, since the check matches the name."""
    found = []
    for rel, text in sources.items():
        tree = parse(text)
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and node.module == "typing":
                found += [f"{where} alias of Any: {a.asname}" for a in node.names
                          if a.name == "Any" and a.asname]
            elif (isinstance(node, ast.Assign) and _is_any(node.value)):
                found.append(f"{where} alias of Any: {ast.unparse(node)}")
            annotated: list[tuple[str, ast.expr]] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs,
                          *([a.vararg] if a.vararg else []), *([a.kwarg] if a.kwarg else [])]
                annotated += [(f"{node.name}({p.arg})", p.annotation) for p in params
                              if p.annotation is not None]
                if node.returns is not None:
                    annotated.append((f"{node.name} returns", node.returns))
            elif isinstance(node, ast.AnnAssign):
                annotated.append((ast.unparse(node.target), node.annotation))
            for what, ann in annotated:
                expr = _annotation(ann)
                if any(_is_any(n) for n in ast.walk(expr) if isinstance(n, ast.expr)) and \
                        not _is_payload(expr):
                    found.append(f"{where} {what}: {ast.unparse(expr)}")
    return sorted(found, key=lambda f: (f.split(":")[0], int(f.split(":")[1].split()[0])))


def test_the_any_check_sees_the_old_capacity_seams() -> None:
    """The seams capacity/ had (issue 26), and the payloads that stay allowed."""
    old = ("class PublishedSource:\n"
           "    def __init__(self, cluster: Any, local: VgSource) -> None:\n"
           "        self.cluster: Any = cluster\n"
           "    async def _publish(self, storage: Any, term: 'Any', offset: int) -> None: ...\n"
           "class Reducer:\n"
           "    def __init__(self, settings: Any,\n"
           "                 vms: Callable[[], list[dict[str, Any]]]) -> None: ...\n"
           "    def collect(self) -> Iterator[Any]: ...\n"
           "def mailbox_reduce(cluster: Any | None, *rest: Any) -> None: ...\n")
    assert [f.split(" ", 1)[1] for f in any_seams({"m.py": old})] == [
        "__init__(cluster): Any", "self.cluster: Any", "_publish(storage): Any",
        "_publish(term): Any", "__init__(settings): Any",
        "__init__(vms): Callable[[], list[dict[str, Any]]]", "collect returns: Iterator[Any]",
        "mailbox_reduce(cluster): Any | None", "mailbox_reduce(rest): Any"]
    payloads = ("async def handle(self, request: dict[str, Any]) -> dict[str, Any]: ...\n"
                "def render(capacity: Mapping[str, Any] | None) -> list[str]: ...\n"
                "def snapshot(self) -> list[dict[str, Any]]: ...\n"
                "x: 'dict[str, Any] | None' = None\n")
    assert any_seams({"p.py": payloads}) == []
    aliases = "from typing import Any as Anything\nLoose = Any\n"
    assert len(any_seams({"a.py": aliases})) == 2
    # Not payloads: Any as a key, a dict keyed by anything else, Any | int.
    loose = ("def f(a: dict[Any, str], b: dict[int, Any], c: Any | int) -> None: ...\n")
    assert len(any_seams({"l.py": loose})) == 3


def test_no_any_typed_collaborator_in_capacity() -> None:
    assert any_seams(sources_of("autoextend/capacity")) == []


def test_capacity_picks_no_backend_by_class() -> None:
    """The VG figures are a capability of the pool backend (``vg_figures``): capacity/
    imports no volume backend to ask ``isinstance`` of."""
    assert violations(py_files("autoextend/capacity"), ("autoextend.lvm",)) == []
