"""What the SPM accepts in a request (pure): VG in the pool, LVM-valid names that are not
lvm2's reserved internal names (``autoextend.names.lv_name_problem``), a sane size.

A request that fails here gets a REJECTED reply with a reason and is never acted upon.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from autoextend.names import is_valid_name, lv_name_problem
from autoextend.spm.wire import OP_GROW_PV, ReasonCode, Request


@dataclass(frozen=True)
class Rejection:
    reason: ReasonCode
    text: str


def check_request(
    req: Request, pool_vgs: Collection[str], max_request_bytes: int
) -> Rejection | None:
    """None when the SPM may act on ``req``; otherwise why not."""
    if not is_valid_name(req.vg):
        return Rejection(ReasonCode.BAD_NAME, f"malformed VG name {req.vg[:40]!r}")
    problem = None if req.op == OP_GROW_PV and not req.lv else lv_name_problem(req.lv)
    if problem:
        return Rejection(ReasonCode.BAD_NAME, f"LV name {req.lv[:40]!r}: {problem}")
    problem = lv_name_problem(req.parent) if req.parent else None
    if problem:
        return Rejection(ReasonCode.BAD_NAME, f"parent LV name {req.parent[:40]!r}: {problem}")
    if req.vg not in pool_vgs:
        return Rejection(ReasonCode.VG_NOT_IN_POOL, f"VG {req.vg} is not in the pool")
    if req.size <= 0:
        return Rejection(ReasonCode.BAD_SIZE, "size must be positive")
    if req.size > max_request_bytes:
        return Rejection(
            ReasonCode.SIZE_TOO_LARGE, f"size {req.size} exceeds the limit {max_request_bytes}"
        )
    return None
