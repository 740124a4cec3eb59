"""The lab domain XML and libvirtd config files (pure)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from autoextend.lab.domxml import domain_xml, guest_domain_xml
from autoextend.lab.guest import GuestJob, parse_cmdline
from autoextend.lab.guestimage import GuestImage
from autoextend.lab.libvirt_migrate import destination_xml
from autoextend.lab.libvirtd import libvirtd_conf, qemu_conf, write_config

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
    assert "cgroup_controllers = [ ]" in qemu_conf()  # two lab daemons: no cgroup clash
    conf = libvirtd_conf(Path("/r"), "6d1a2d2c-3f5e-4a86-9f59-0d6b7c1c2e11")
    assert 'unix_sock_dir = "/r/sock"' in conf
    assert 'auth_unix_rw = "none"' in conf
    assert 'host_uuid = "6d1a2d2c-3f5e-4a86-9f59-0d6b7c1c2e11"' in conf


def test_each_lab_libvirtd_has_its_own_host_uuid(tmp_path: Path) -> None:
    """libvirt refuses a migration between two daemons with one host UUID."""
    uuids = set()
    for name in ("a", "b"):
        write_config(tmp_path / name)
        text = (tmp_path / name / "etc" / "libvirtd.conf").read_text()
        (line,) = [x for x in text.splitlines() if x.startswith("host_uuid")]
        uuids.add(line)
    assert len(uuids) == 2


def test_file_disks_for_a_fault_source() -> None:
    xml = domain_xml("d", GUEST, ["/m/a.img"], cmdline="x", serial_log="/s", files=True,
                     error_policy="stop", rerror_policy="stop")
    disk = ET.fromstring(xml).find("./devices/disk")
    assert disk is not None and disk.get("type") == "file"
    driver, source = disk.find("driver"), disk.find("source")
    assert driver is not None and source is not None
    assert (driver.get("type"), driver.get("error_policy"), driver.get("rerror_policy"),
            driver.get("io")) == ("raw", "stop", "stop", "threads")
    assert source.attrib == {"file": "/m/a.img"}


def test_destination_xml_maps_disks_and_serial() -> None:
    xml = domain_xml("d", GUEST, ["/dev/loop1"], cmdline="x", serial_log="/s/src.serial")
    moved = ET.fromstring(destination_xml(xml, {"/dev/loop1": "/dev/loop9"}, "/s/dst.serial"))
    assert moved.find("./devices/disk/source").attrib == {"dev": "/dev/loop9"}  # type: ignore[union-attr]
    assert moved.find("./devices/serial/source").get("path") == "/s/dst.serial"  # type: ignore[union-attr]
    with pytest.raises(KeyError):
        destination_xml(xml, {}, "/s/dst.serial")
