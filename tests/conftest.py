"""Project-wide test setup: the lab's pytest plugin (guest, volumes, VMs, libvirtd, leftover
check). See autoextend/lab/fixtures.py for the fixtures."""

pytest_plugins = ["autoextend.lab.fixtures"]
