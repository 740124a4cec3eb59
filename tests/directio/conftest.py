"""Fixtures for directio tests: scratch files under /var/tmp (O_DIRECT needs a real fs)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="autoextend-directio-", dir="/var/tmp") as tmp:
        yield Path(tmp)


@pytest.fixture
def scratch_file(scratch_dir: Path) -> Path:
    path = scratch_dir / "area.img"
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    return path


@pytest.fixture(params=[512, 4096], ids=["loop512", "loop4k"])
def loop_device(request: pytest.FixtureRequest, scratch_dir: Path) -> Iterator[tuple[str, int]]:
    """A loop device with 512 B or 4 KiB logical sectors; skipped if losetup cannot run."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    backing = scratch_dir / "loop.img"
    with open(backing, "wb") as f:
        f.truncate(8 << 20)
    sector = int(request.param)
    try:
        dev = subprocess.run(
            ["losetup", "--find", "--show", "--sector-size", str(sector), str(backing)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"losetup failed: {err}")
    try:
        yield dev, sector
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
