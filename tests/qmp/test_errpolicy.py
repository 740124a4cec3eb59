"""A drive's write error policy over QMP (qmp/errpolicy.py): QEMU's option syntax, the
legacy -drive lookup, and finding the QEMU that owns a QMP socket in /proc (pure parts)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from autoextend.qmp.errpolicy import legacy_werror, qemu_argv, resolve, split_options

keys = st.text(alphabet="abcdefgh-_.", min_size=1, max_size=8)
values = st.text(alphabet="abc,=/ 0123", max_size=12)


@given(st.dictionaries(keys, values, max_size=6))
def test_split_options_reads_what_qemu_would(opts: dict[str, str]) -> None:
    text = ",".join(f"{k}={v.replace(',', ',,')}" for k, v in opts.items())
    assert split_options(text) == opts


def test_split_options_examples() -> None:
    assert split_options("file=/dev/a,,b,if=none,id=d0,werror=report") == {
        "file": "/dev/a,b", "if": "none", "id": "d0", "werror": "report"}
    assert split_options("bare,id=x") == {"id": "x"}


def test_legacy_werror_by_drive_id() -> None:
    argv = ["qemu-system-x86_64", "-drive", "file=/dev/x,if=none,id=d0,werror=ignore",
            "-drive", "file=/dev/y,if=none,id=d1", "-drive", "id=d2,werror=banana"]
    assert legacy_werror(argv, "d0") == "ignore"
    assert legacy_werror(argv, "d1") == ""      # unset: QEMU's default
    assert legacy_werror(argv, "d2") == ""      # not a policy: unknown, never a guess
    assert legacy_werror(argv, "nope") == ""


def test_resolve() -> None:
    assert resolve("report", "") == "report"
    assert resolve("auto", "ignore") == "ignore"
    assert resolve("auto", "") == ""
    assert resolve(7, "report") == "" and resolve("weird", "") == ""


def test_qemu_argv_finds_the_process_naming_the_socket(tmp_path: Path) -> None:
    def proc(pid: str, argv: list[str]) -> None:
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    proc("10", ["/usr/bin/python3", "-qmp", "unix:/run/q/vm1.sock"])   # not a QEMU
    proc("11", ["/usr/bin/qemu-system-x86_64", "-qmp", "unix:/run/q/vm2.sock,server=on"])
    proc("12", ["/usr/bin/qemu-system-x86_64", "-qmp", "unix:/run/q/vm1.sock,server=on",
                "-drive", "id=d0,werror=report"])
    (tmp_path / "self").mkdir()
    argv = qemu_argv("/run/q/vm1.sock", tmp_path)
    assert argv is not None and legacy_werror(argv, "d0") == "report"
    assert qemu_argv("/run/q/none.sock", tmp_path) is None
