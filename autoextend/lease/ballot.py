"""Disk Paxos (Gafni-Lamport) for one SPM lease instance, as pure functions on decoded blocks.

One instance decides the owner of lease version ``lver``. Each host writes only its own
dblock and reads all of them. A ballot is::

    phase 1: write own block (lver, mbal=b, bal, inp) ; read all ; abort if any block has a
             larger lver, or the same lver and a larger mbal, or is unreadable
    choose:  inp of the block with the highest bal for this lver, else our own input
    phase 2: write own block (lver, mbal=b, bal=b, inp=chosen) ; read all ; same abort check
    decided: chosen (the caller then writes the leader record)

Ballot numbers are ``k * max_hosts + host_id``, disjoint between hosts. Blocks of an older
lver count as empty for this instance. The async I/O around these functions is in
``paxos.py``; the hypothesis model in tests/lease drives the same functions step by step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from autoextend.lease.format import FLAG_RELEASED, Dblock


@dataclass(frozen=True)
class Value:
    """A proposed owner: host id and the generation of its host id lease."""

    host_id: int
    generation: int


BlockView = Mapping[int, Dblock | None]  # host_id -> block, None when unreadable


def next_ballot(blocks: BlockView, lver: int, host_id: int, max_hosts: int, own_mbal: int) -> int:
    """A ballot larger than every mbal seen for ``lver`` (and our own last), owned by us."""
    highest = max(
        [own_mbal] + [b.mbal for b in blocks.values() if b is not None and b.lver == lver]
    )
    k = highest // max_hosts + 1
    return k * max_hosts + host_id


def abort_reason(blocks: BlockView, lver: int, mbal: int, host_id: int) -> str | None:
    """Why a ballot ``mbal`` for ``lver`` must abort after reading ``blocks``, or None."""
    for other, block in blocks.items():
        if block is None:
            return f"dblock of host {other} is unreadable"
        if block.lver > lver:
            return f"host {other} is at lver {block.lver}"
        if other != host_id and block.lver == lver and block.mbal > mbal:
            return f"host {other} has a larger ballot {block.mbal}"
    return None


def choose_value(blocks: BlockView, lver: int, mine: Value) -> Value:
    """The input of the highest accepted ballot for ``lver``, else our own."""
    best: Dblock | None = None
    for block in blocks.values():
        if block is not None and block.lver == lver and block.bal > 0:
            if best is None or block.bal > best.bal:
                best = block
    return Value(best.inp_host, best.inp_generation) if best is not None else mine


def phase1_block(own: Dblock | None, host_id: int, lver: int, mbal: int) -> Dblock:
    """Our block for phase 1: new mbal, keeping bal/inp if it is the same instance."""
    if own is not None and own.lver == lver:
        return Dblock(host_id, lver, mbal, own.bal, own.inp_host, own.inp_generation)
    return Dblock(host_id, lver, mbal, 0, 0, 0)


def phase2_block(host_id: int, lver: int, mbal: int, value: Value) -> Dblock:
    return Dblock(host_id, lver, mbal, mbal, value.host_id, value.generation)


def highest_lver(blocks: BlockView) -> int:
    return max([0] + [b.lver for b in blocks.values() if b is not None])


def released_at(blocks: BlockView, lver: int) -> bool:
    """Some host's block at ``lver`` is RELEASED: that host held version ``lver`` and gave it
    back (only the holder of a version marks its block so), so instance ``lver`` is decided
    and over. A leader record behind such a block lost its commit (or a late write of an older
    version's release landed on it); the next version to run is ``lver + 1``, never ``lver``
    again (re-running it would hand the same version out twice)."""
    return any(b is not None and b.lver == lver and b.flags & FLAG_RELEASED
               for b in blocks.values())
