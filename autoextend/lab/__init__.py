"""The one-machine lab: real guests, thin volumes, QEMU and libvirtd for demo, tests, benchmarks.

Modules:
    guest        the guest's job (kernel command line) and result line, pure functions
    guest_init   the guest's busybox /init script
    guestimage   build and cache the guest (Debian cloud kernel + busybox initramfs)
    cpio         newc cpio writer for the initramfs
    thinvol      thin volumes: sparse file + loop device + qcow2
    qemu         QEMU launcher (TCG, direct kernel boot, QMP socket, serial log)
    libvirtd     an isolated libvirtd + virtlogd for tests (libvirtd_ns: its namespace side)
    domxml       libvirt domain XML for the lab guest (ENOSPC pause policy)
    events       the once-per-process libvirtaio registration
    leftovers    find loop devices / processes a test session left behind
    fixtures     pytest plugin (fixtures + leftover check)
    proc, errors helpers: run a command, the lab's errors
    waiting      until(): THE polling helper of the lab and the tests
    leasefile    create and format a lease area file (lease torture tests, lease benchmarks)

Production code never imports this package (only the ``autoextend lab`` and ``demo``
commands front it; ``tests/test_layers.py`` checks this).
"""
