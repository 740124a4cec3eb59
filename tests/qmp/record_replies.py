"""Record real QMP replies for the table tests: ``python tests/qmp/record_replies.py``.

Starts one q35 QEMU (no guest) with every kind of drive the parser must tell apart and
writes ``data/q35_mixed.json``: query-block, query-named-block-nodes (flat), query-blockstats
(query-nodes), taken after a 2 MiB write through qemu-io and a threshold armed on vda.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from qmp_testlab import DriveSpec, qemu_lab  # noqa: E402

OUT = Path(__file__).parent / "data" / "q35_mixed.json"


async def main() -> None:
    async with qemu_lab() as lab:
        rw = await lab.volume()
        raw = await lab.volume(fmt="raw")
        ro = await lab.volume()
        hot = await lab.volume()
        qemu = await lab.start("mixed", [DriveSpec(rw, "vda"), DriveSpec(raw, "vdb", fmt="raw"),
                                         DriveSpec(ro, "vdc", read_only=True)], scsi=True,
                               extra=["-device", "ide-cd,id=cd0,bus=ide.0"])
        await lab.control(qemu, "blockdev-add", {"driver": "host_device", "node-name": "prot9",
                                                 "filename": hot.device})
        await lab.control(qemu, "blockdev-add", {"driver": "qcow2", "node-name": "fmt9",
                                                 "file": "prot9"})
        await lab.control(qemu, "device_add", {"driver": "scsi-hd", "id": "sdb", "drive": "fmt9",
                                               "bus": "scsi0.0"})
        await lab.control(qemu, "block-set-write-threshold",
                          {"node-name": "prot0", "write-threshold": 32 << 20})
        await lab.qemu_io(qemu, "fmt0", "write -P 0x5a 0 2M")
        record = {
            "devices": {"rw": rw.device, "raw": raw.device, "ro": ro.device, "hot": hot.device},
            "query-block": await lab.control(qemu, "query-block"),
            "query-named-block-nodes": await lab.control(qemu, "query-named-block-nodes",
                                                         {"flat": True}),
            "query-blockstats": await lab.control(qemu, "query-blockstats",
                                                  {"query-nodes": True}),
            "query-status": await lab.control(qemu, "query-status"),
            "query-name": await lab.control(qemu, "query-name"),
        }
    OUT.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(OUT)


if __name__ == "__main__":
    anyio.run(main)
