"""The man pages render with man(1) without a warning (groff's -ww through man --warnings)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("page", ["man/autoextend.8", "man/autoextend.toml.5"])
def test_man_renders_without_warnings(page: str) -> None:
    assert shutil.which("man"), "man is missing: `make apt` installs man-db and groff-base"
    env = dict(os.environ, MANWIDTH="80", MAN_KEEP_FORMATTING="", LANG="C.UTF-8")
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(ROOT / page)],
                            capture_output=True, text=True, timeout=120, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) > 100
    title = "AUTOEXTEND(8)" if page.endswith(".8") else "AUTOEXTEND.TOML(5)"
    assert result.stdout.startswith(title)


def test_man_reports_a_broken_page(tmp_path: Path) -> None:
    # The check above can fail: a page with an unknown request gets a warning on stderr.
    bad = tmp_path / "bad.8"
    bad.write_text('.TH BAD 8\n.SH NAME\nbad \\- bad\n.XYZZY nothing\n\\fBunclosed\n.BADREQ\n')
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(bad)],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, MANWIDTH="80"), check=False)
    assert result.stderr != ""
