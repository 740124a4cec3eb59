"""Everything autoextend does with lvm2, and the loop-device stand-in with the same contract.

- ``volume``: the VolumeBackend boundary (VolumeRef, ExtendResult).
- ``factory.make_volume_backend(volumes, lvm, authority)``: the configured backend.
- ``reader.LvmReader`` (any host: ``--readonly`` reports, refresh) and ``writer.LvmWriter``
  (SPM only, checks its ``authority`` before every command).
- ``runner.ProcessRunner`` / ``shell.LvmShellRunner`` / ``shell.PerVgShellRunner`` (the
  default: a shell session per VG, VGs in parallel): how commands run.
- ``report``: typed PV/VG/LV and strict JSON parsing; ``names``: names, paths, extents.
"""
