"""The lab domain XML and libvirtd config files (pure)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from autoextend.lab.domxml import domain_xml, guest_domain_xml
from autoextend.lab.guest import GuestJob, parse_cmdline
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirtd import libvirtd_conf, qemu_conf

GUEST = GuestImage(Path("/c/vmlinuz"), Path("/c/initrd.img"), "6.1", "k", Path("/c"))


def test_domain_xml_has_the_enospc_policy_and_direct_boot() -> None:
    job = GuestJob(mib=64, seed=4)
    xml = guest_domain_xml("d1", GUEST, ["/dev/loop7", "/dev/loop9"], job, "/s/serial.log")
    dom = ET.fromstring(xml)
    assert dom.get("type") == "qemu"
    assert dom.findtext("name") == "d1"
    assert dom.findtext("os/kernel") == "/c/vmlinuz"
    assert dom.findtext("os/initrd") == "/c/initrd.img"
    assert parse_cmdline(dom.findtext("os/cmdline") or "") == job
    disks = dom.findall("devices/disk")
    assert [d.find("source").get("dev") for d in disks] == ["/dev/loop7", "/dev/loop9"]  # type: ignore[union-attr]
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]  # type: ignore[union-attr]
    for disk in disks:
        assert disk.get("type") == "block"
        driver = disk.find("driver")
        assert driver is not None
        assert driver.attrib == {"name": "qemu", "type": "qcow2", "cache": "none",
                                 "io": "native", "error_policy": "enospace",
                                 "rerror_policy": "report"}
    serial = dom.find("devices/serial")
    assert serial is not None and serial.get("type") == "file"
    assert serial.find("source").get("path") == "/s/serial.log"  # type: ignore[union-attr]


def test_domain_xml_escapes_and_rejects() -> None:
    xml = domain_xml("a<b&c", GUEST, ["/dev/loop1"], cmdline="x", serial_log="/s")
    assert ET.fromstring(xml).findtext("name") == "a<b&c"
    with pytest.raises(ValueError):
        domain_xml("d", GUEST, [], cmdline="x", serial_log="/s")


def test_config_files() -> None:
    assert 'user = "root"' in qemu_conf() and 'group = "root"' in qemu_conf()
    conf = libvirtd_conf(Path("/r"))
    assert 'unix_sock_dir = "/r/sock"' in conf
    assert 'auth_unix_rw = "none"' in conf
