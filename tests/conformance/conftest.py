"""Fixtures of the conformance suites: one subject per implementation of each boundary (built
in the ``*_subjects`` helper modules; the real ones are marked ``slow``)."""

from __future__ import annotations

from tests.conformance.extender_subjects import extender_subject
from tests.conformance.hypervisor_subjects import conformance_qemu_lab, hypervisor_driver
from tests.conformance.sector_subjects import sector_storage
from tests.conformance.volume_subjects import volume_subject

__all__ = [
    "conformance_qemu_lab",
    "extender_subject",
    "hypervisor_driver",
    "sector_storage",
    "volume_subject",
]
