"""pytest plugin: in ``make unit`` mode, a test that starts a heavy host program fails.

``make unit`` (``pytest -m "not slow"``) must run without QEMU, libvirtd, lvm2, loop devices,
sanlock or Prometheus. With ``AUTOEXTEND_UNIT=1`` in the environment (the Makefile sets it),
this plugin:

* refuses, in this process, to spawn any of :data:`FORBIDDEN` (by name through ``PATH``, or
  by a path under a system directory such as ``/usr/bin/qemu-system-x86_64``; a test's own
  stand-in script elsewhere is fine): the spawn raises :class:`ForbiddenProgram`;
* puts shims of the same names first on ``PATH`` so child processes (an ``autoextend run``
  started by a test) that run one fail too (exit 97) and log which test did it;
* fails every test that tried (even if the code under test swallowed the error), naming the
  program and saying to mark the test ``slow``.

The guard is lifted at session end, before the lab's leftover check (which runs ``losetup``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

ENV = "AUTOEXTEND_UNIT"
FORBIDDEN = (
    "qemu-system-x86_64", "qemu-system-i386", "libvirtd", "virtlogd", "virtqemud", "virsh",
    "lvm", "pvcreate", "vgcreate", "lvcreate", "lvextend", "lvchange", "vgchange", "pvs",
    "vgs", "lvs", "losetup", "sanlock", "wdmd", "prometheus", "promtool",
)
SHIM_EXIT = 97


class ForbiddenProgram(RuntimeError):
    def __init__(self, program: str) -> None:
        self.program = program
        super().__init__(f"{program} may not run in make unit: mark the test slow")


SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/opt/")


def forbidden(program: str) -> bool:
    """The real program by that name (found on PATH or under a system directory); a test's
    own stand-in script (``tmp_path / "lvm"``) is fine."""
    name = os.path.basename(program)
    if not (name in FORBIDDEN or name.startswith("qemu-system-")):
        return False
    return "/" not in program or program.startswith(SYSTEM_DIRS)


class Guard:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ae-unitguard-"))
        self.log = self.dir / "spawned.log"
        self.log.touch()
        self.spawned: list[str] = []
        self._saved_path = os.environ.get("PATH", "")
        self._original: Any = None

    def install(self) -> None:
        shims = self.dir / "bin"
        shims.mkdir()
        for name in FORBIDDEN:
            shim = shims / name
            shim.write_text(
                "#!/bin/sh\n"
                f'echo "${{PYTEST_CURRENT_TEST:-?}}: $0" >> "{self.log}"\n'
                f'echo "autoextend unit guard: {name} may not run in make unit '
                f'(mark the test slow)" >&2\n'
                f"exit {SHIM_EXIT}\n"
            )
            shim.chmod(0o755)
        os.environ["PATH"] = f"{shims}{os.pathsep}{self._saved_path}"
        original = subprocess.Popen._execute_child  # type: ignore[attr-defined]
        guard = self

        def _execute_child(popen: subprocess.Popen[Any], args: Any, executable: Any,
                           *rest: Any, **kwargs: Any) -> Any:
            shell = len(rest) > 7 and bool(rest[7])  # Popen._execute_child's `shell`
            first = args if isinstance(args, str | bytes) else list(args)[0]
            if executable is not None and not shell:
                program = os.fsdecode(executable)
            else:  # one program, or a shell command line: its first word
                words = os.fsdecode(first).split()
                program = words[0] if words else ""
            if forbidden(program):
                guard.spawned.append(program)
                raise ForbiddenProgram(program)
            return original(popen, args, executable, *rest, **kwargs)

        self._original = original
        subprocess.Popen._execute_child = _execute_child  # type: ignore[attr-defined]

    def uninstall(self) -> None:
        if self._original is not None:
            subprocess.Popen._execute_child = self._original  # type: ignore[attr-defined]
            self._original = None
        os.environ["PATH"] = self._saved_path
        shutil.rmtree(self.dir, ignore_errors=True)

    def taken(self) -> list[str]:
        """What was spawned (or tried) since the last call."""
        found, self.spawned = self.spawned, []
        if self.log.exists():
            found += [line for line in self.log.read_text().splitlines() if line]
            self.log.write_text("")
        return found


_GUARD_KEY = pytest.StashKey[Guard]()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV) == "1":
        guard = Guard()
        guard.install()
        config.stash[_GUARD_KEY] = guard


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    guard = session.config.stash.get(_GUARD_KEY, None)
    if guard is not None:
        guard.uninstall()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    guard = item.config.stash.get(_GUARD_KEY, None)
    if guard is None:
        return (yield)
    guard.taken()  # what a fixture's setup tried already failed its own way
    try:
        result = yield
    finally:
        taken = guard.taken()
    if taken:
        pytest.fail("make unit runs no QEMU, libvirtd, lvm2, loop devices, sanlock or "
                    f"Prometheus; this test tried: {sorted(set(taken))} (mark it slow)",
                    pytrace=False)
    return result
