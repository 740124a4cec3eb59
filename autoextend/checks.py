"""The safety checks that only the simulation's mutation check or a test's negative control
may turn off, as one frozen value passed in at construction.

Production code never builds a :class:`Checks` with anything off: it uses :data:`ALL_ON`
(every constructor's default). There is no class attribute, setter or module global that
switches a check: a component gets its ``Checks`` when it is built, keeps it for its life,
and nothing reachable by ``setattr`` on a class changes another instance's checks.
``tests/test_layers.py`` enforces this (who may build a ``Checks`` with a field off, no
class-level switch named like one of these fields, no ``setattr`` on a product class from
``sim/`` or ``tests/``).

Each field names the invariant it protects and where it is checked:

- ``term_check`` (``lease/term.py: Term.check``): the body of ``spm()`` acts only while the
  SPM term is valid; ``check()`` raises from the instant the lease may be lost, and the
  term's guard (``guard``, the check's timer) cancels the body at that instant, as does the
  loss of the host id (``LeaseService._lost``). Off (all three):
  the simulation's ``term-check`` mutant and the chaos soak's (a stale SPM writes metadata
  and replies).
- ``fresh_owner_read`` (``lease/service.py: LeaseService._owner_gone``): a takeover trusts a
  free slot or another generation only from a read issued after its leader read. Off: the
  simulation's ``owner-read`` mutant (two SPMs at once).
- ``match_generation`` (``spm/host.py: HostMailbox``): a host takes a reply only if it
  carries its own mailbox generation. Off: the simulation's ``generation`` mutant (a reply
  meant for a previous incarnation is acted on).
- ``protect_views`` (``monitor/migrating.py: MigrationSteps``): during a live migration the
  source never refreshes its view and the destination refreshes before it arms. Off: the
  migration tests' negative control (the guest reads stale zeros on the destination).
- ``check_views`` (``monitor/viewcheck.py: judge_view``, used at every VM appearance and by
  the continuous view audit): no guest runs on a view smaller than its volume's metadata
  size. Off: the simulation's ``view-check`` mutant and the stale-start negative control.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Checks:
    """Which safety checks run; every one by default. See the module docstring."""

    term_check: bool = True
    fresh_owner_read: bool = True
    match_generation: bool = True
    protect_views: bool = True
    check_views: bool = True


ALL_ON = Checks()
