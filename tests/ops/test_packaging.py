"""Packaging: the wheel and sdist install into a fresh virtualenv (with the man pages); the
systemd unit matches the install steps of the operator guide (docs/operator-guide.md) and the
README's copy of them."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autoextend import __version__
from autoextend.settings import DEFAULT_CONFIG_PATH

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "autoextend.service"


def _install_steps() -> list[str]:
    """The install steps: the operator guide's section and the README's copy of it."""
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    readme = (ROOT / "README.md").read_text()
    return [guide.split("## Install and enable", 1)[1].split("\n## ", 1)[0],
            readme.split("## Install on a host", 1)[1].split("\n## ", 1)[0]]


def _run(cmd: list[str], expect: int = 0, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                            **kwargs)  # type: ignore[call-overload]
    assert result.returncode == expect, f"{shlex.join(cmd)}:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def test_license_is_an_spdx_string() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "GPL-2.0-or-later"
    assert "setuptools>=77" in meta["build-system"]["requires"]
    assert meta["project"]["scripts"]["autoextend"] == "autoextend.cli.entry:main"


def _unit_exec_start() -> list[str]:
    (line,) = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_unit_matches_the_install_steps() -> None:
    argv = _unit_exec_start()
    binary = argv[0]
    # Install steps: `pip install .` as root (pip's scripts dir /usr/local/bin) or the symlink
    # `ln -s .venv/bin/autoextend /usr/local/bin/autoextend`: both put the entry point here.
    assert binary == "/usr/local/bin/autoextend"
    for install in _install_steps():
        assert re.search(r"ln -s \"?\S+/\.venv/bin/autoextend\"? /usr/local/bin/autoextend",
                         install)
        assert "install -m 0644 config/autoextend.service /etc/systemd/system/autoextend.service" \
            in install
        # No --config: the service reads the default path, where the steps install the file.
        assert f"config/autoextend.toml {DEFAULT_CONFIG_PATH}" in install
    assert "--config" not in argv and argv[-1] == "run"
    text = UNIT.read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    # The unit's RuntimeDirectory is where the default control socket lives.
    from autoextend.settings import ServiceSettings
    assert Path(ServiceSettings().control_socket).parent == Path("/run/autoextend")
    assert "RuntimeDirectory=autoextend" in text


def test_libvirt_hook_matches_the_install_steps() -> None:
    hook = ROOT / "contrib" / "libvirt" / "hooks" / "qemu"
    assert hook.stat().st_mode & 0o111, "the hook must be executable"
    step = "install -D -m 0755 contrib/libvirt/hooks/qemu /etc/libvirt/hooks/qemu.d/autoextend"
    for install in _install_steps():
        assert step in install
    assert step.split()[-1] in hook.read_text()  # the hook's own install note agrees
    # It runs the entry point where the unit does.
    assert '${AUTOEXTEND:-/usr/local/bin/autoextend}' in hook.read_text()
    assert _unit_exec_start()[0] == "/usr/local/bin/autoextend"


@pytest.mark.slow
@pytest.mark.cpu
def test_wheel_and_sdist_install_into_a_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)])
    assert "deprecat" not in (build.stdout + build.stderr).lower()
    (wheel,) = dist.glob("autoextend-*.whl")
    (sdist,) = dist.glob("autoextend-*.tar.gz")
    for name, artifact in (("wheel", wheel), ("sdist", sdist)):
        venv = tmp_path / f"venv-{name}"
        _run([sys.executable, "-m", "venv", str(venv)])
        _run([str(venv / "bin" / "pip"), "install", "-q", str(artifact)])
        version = _run([str(venv / "bin" / "autoextend"), "--version"])
        assert version.stdout.strip() == f"autoextend, version {__version__}"
        # The man pages land under the prefix's share/man (/usr/local/share/man as root).
        for page in ("man8/autoextend.8", "man5/autoextend.toml.5"):
            installed = venv / "share" / "man" / page
            assert installed.read_text() == (ROOT / "man" / Path(page).name).read_text()
        # The installed package works from outside the source tree. The shipped config is
        # complete but for the pool's PVs, which only the operator knows: config check says so
        # in one line (exit 2), and passes once they are given.
        exe = str(venv / "bin" / "autoextend")
        shipped = _run([exe, "--config", str(ROOT / "config" / "autoextend.toml"), "config",
                        "check"], expect=2, cwd=tmp_path)
        assert shipped.stderr.strip().endswith("lvm.pvs: must list the pool's PVs for "
                                               "volumes.backend = lvm"), shipped.stderr
        configured = tmp_path / f"{name}.toml"
        text = (ROOT / "config" / "autoextend.toml").read_text()
        assert "\npvs = []\n" in text
        configured.write_text(text.replace("\npvs = []\n",
                                           '\npvs = ["/dev/disk/by-id/wwn-0x600a0b80001"]\n'))
        check = _run([exe, "--config", str(configured), "config", "check"], cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
