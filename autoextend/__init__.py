"""autoextend: grows thin qcow2-on-LVM VM disks before guests fill them.

Packages:
    monitor/          per-drive state machine and threshold/size policy (no I/O below VMs)
    qmp/              hypervisor backend speaking QMP directly to QEMU
    libvirt_backend/  hypervisor backend going through libvirtd
    lvm/              every interaction with lvm2, and the loop-device stand-in
    lease/            delta leases (host ids) and the Disk Paxos SPM lease
    spm/              storage mailbox, SPM server, host-side mailbox extender
    lab/              one-machine rig: guests, thin volumes, QEMU and libvirtd launchers
    cli/              the `autoextend` command

Neutral modules every layer may import: volumes.py (VolumeRef, the volume backend and SPM
authority protocols), metadata_area.py (where the leases and the mailbox live).
"""

from __future__ import annotations

__version__ = "0.1.0"
