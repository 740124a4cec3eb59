"""CLI habits: the common options after the subcommand, --help depth, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from autoextend.cli.main import cli
from tests.cli.clirun import autoextend, write_config


def _all_commands(group: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    import click

    assert isinstance(group, click.Command)
    out = [path]
    if isinstance(group, click.Group):
        for name, sub in group.commands.items():
            out.extend(_all_commands(sub, (*path, name)))
    return out


def test_options_mean_the_same_before_and_after_the_subcommand(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", "[policy]\nchunk_mib = 128\n")
    before = autoextend("--config", str(path), "config", "show")
    after = autoextend("config", "show", "--config", str(path))
    between = autoextend("config", "--config", str(path), "show")
    assert before.code == after.code == between.code == 0
    assert before.stdout == after.stdout == between.stdout
    assert "chunk_mib = 128" in after.stdout
    # --log-level / --log-format after the subcommand reach the effective config too.
    shown = autoextend("config", "show", "--config", str(path), "--log-level", "error",
                       "--log-format=json")
    assert 'log_level = "error"' in shown.stdout and 'log_format = "json"' in shown.stdout
    # The last one given wins.
    other = write_config(tmp_path / "d.toml", "[policy]\nchunk_mib = 256\n")
    both = autoextend("--config", str(path), "config", "show", "--config", str(other))
    assert "chunk_mib = 256" in both.stdout


def test_run_accepts_config_after_the_subcommand(tmp_path: Path) -> None:
    """`autoextend run --config F` == `autoextend --config F run` (here: the same refusal of
    the same file, which proves F was read in both orders)."""
    path = write_config(tmp_path / "c.toml", "[lvm]\nvgs = []\n")
    a = autoextend("run", "--config", str(path))
    b = autoextend("--config", str(path), "run")
    assert a.code == b.code == 2
    assert a.error == b.error == f"autoextend: config error: {path}: lvm.pvs: must list the" \
                                 " pool's PVs for volumes.backend = lvm"


def test_every_command_takes_the_common_options() -> None:
    for path in _all_commands(cli):
        cmd: click.Command = cli
        for name in path:
            assert isinstance(cmd, click.Group)
            cmd = cmd.commands[name]
        names = {p.name for p in cmd.params}
        assert {"config_path", "log_level", "log_format"} <= names, path


@pytest.mark.parametrize("command", [["run"], ["status"], ["config"], ["config", "check"]])
def test_help_has_examples(command: list[str]) -> None:
    result = autoextend(*command, "--help")
    assert result.code == 0
    assert "Examples:" in result.stdout or "Validate" in result.stdout
    assert "--config" in result.stdout and "--log-level" in result.stdout


def test_top_level_help_documents_exit_codes_and_completion() -> None:
    out = autoextend("--help").stdout
    assert "Exit codes" in out and "_AUTOEXTEND_COMPLETE=bash_source" in out


def test_bash_completion_works() -> None:
    env = {**os.environ, "_AUTOEXTEND_COMPLETE": "bash_complete", "COMP_WORDS": "autoextend co",
           "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-m", "autoextend"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "plain,config" in proc.stdout.splitlines()
    env["COMP_WORDS"], env["COMP_CWORD"] = "autoextend run --log-l", "2"
    proc = subprocess.run([sys.executable, "-m", "autoextend"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert "plain,--log-level" in proc.stdout.splitlines()


def test_usage_errors_are_one_line() -> None:
    for args in (["nosuch"], ["run", "--bogus"], ["--log-level", "loud", "run"],
                 ["status", "--log-format", "xml"]):
        result = autoextend(*args)
        assert result.code == 2
        assert result.error.startswith("autoextend: usage error: ")
