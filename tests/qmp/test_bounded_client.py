"""The QMP client's reader: a too-deep or unparsable line is qemu.qmp's own
DeserializationError (which ends that connection), never a RecursionError or ValueError; and
no message is serialised for a debug log that is off."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from qemu.qmp.message import DeserializationError, Message

from autoextend.qmp.devsize import device_sizes
from autoextend.qmp.listener import MAX_DEPTH, BoundedClient


def _Line(line: bytes) -> BoundedClient:
    """A client whose incoming stream holds ``line`` (as a connection would give it)."""
    client = BoundedClient("t")
    reader = asyncio.StreamReader(limit=1 << 20)
    reader.feed_data(line)
    reader.feed_eof()
    client._reader = reader
    return client


@pytest.mark.parametrize("line", [
    b"[" * 100_000 + b"]" * 100_000 + b"\n",
    b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"\n",
    b'{"return": [' + b"9" * 5000 + b"]}\n",
    b"\xff\xfe garbage\n",
    b"[1, 2]\n",
])
async def test_unreadable_lines(line: bytes) -> None:
    with pytest.raises(DeserializationError) as info:
        await _Line(line)._do_recv()
    assert len(str(info.value)) < 400


async def test_deep_but_allowed() -> None:
    depth = MAX_DEPTH - 1
    msg = await _Line(b'{"return": ' + b"[" * depth + b"]" * depth + b"}\n")._do_recv()
    assert "return" in msg


async def test_device_size_of_a_path_with_nul_is_unknown(tmp_path: Path) -> None:
    volume = tmp_path / "v"
    volume.write_bytes(b"\0" * 4096)
    assert await device_sizes([str(volume)]) == [4096]
    assert await device_sizes([str(volume) + "\x00"]) == [None]
    assert await device_sizes([str(tmp_path / "absent")]) == [None]
    # A VM's drives at once, each on its own: one unknown size spoils no other.
    assert await device_sizes([str(volume), str(tmp_path / "absent"), str(volume) + "\x00",
                               str(volume)]) == [4096, None, None, 4096]
    assert await device_sizes([]) == []


class _Counted(Message):
    """A message that counts how often it is turned back into JSON."""

    serialised = 0

    def __str__(self) -> str:
        _Counted.serialised += 1
        return super().__str__()


def test_a_message_is_serialised_for_the_debug_log_only_when_it_is_on(
        caplog: pytest.LogCaptureFixture) -> None:
    """qemu.qmp's own filters call ``str(msg)`` for every message whatever the log level
    (a big reply re-encoded, then dropped): the client's do it only for a debug log."""
    client = BoundedClient("vm1")
    msg = _Counted({"return": {"big": list(range(100))}})
    _Counted.serialised = 0
    with caplog.at_level(logging.INFO, logger=client.logger.name):
        assert client._cb_inbound(msg) is msg and client._cb_outbound(msg) is msg
    assert _Counted.serialised == 0
    with caplog.at_level(logging.DEBUG, logger=client.logger.name):
        client._cb_inbound(msg)
        client._cb_outbound(msg)
    assert _Counted.serialised == 2
    assert [r.getMessage()[:4] for r in caplog.records] == ["<-- ", "--> "]
