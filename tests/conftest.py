"""Project-wide test setup: the lab's pytest plugin (guest, volumes, VMs, libvirtd, leftover
check; see autoextend/lab/fixtures.py) and pytester for testing that plugin."""

pytest_plugins = ["autoextend.lab.fixtures", "pytester"]
