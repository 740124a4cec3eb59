"""Issue 31: an arrived guest whose QEMU activated a drive on a stale view is stopped before
it runs (``monitor/migration.py: short_activation``, ``monitor/migrating.py``).

QEMU 7.2 takes a ``host_device`` node's length when it activates the node (at the
migration's completion unless ``late-block-activate`` defers it to ``cont``) and reads zeros
past it (``tests/e2e/test_migration_node_length.py``). A view refreshed after the
activation does not help that QEMU, so the destination's monitor stops it, as
``ViewSteps._restart`` stops a guest that opened a stale view before it ran.
"""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st

from autoextend.lab.waiting import until
from autoextend.monitor.migration import MigrationInfo, Phase, Role, short_activation
from autoextend.monitor.policy import MiB
from autoextend.monitor.protocols import PauseReason
from tests.monitor.rig import VOL, Rig, Views, arrive_paused, views_rig

names = st.sampled_from(["vda", "vdb", "vdc", "sda"])
sizes = st.integers(min_value=0, max_value=1 << 40)


@given(st.none() | st.lists(st.tuples(names, sizes), max_size=6).map(tuple),
       st.dictionaries(names, sizes, max_size=4), st.booleans(),
       st.dictionaries(names, sizes, max_size=4))
def test_short_activation_names_exactly_the_drives_activated_below_their_view(
        lengths: tuple[tuple[str, int], ...] | None, views: dict[str, int],
        ran: bool, covered: dict[str, int]) -> None:
    short = short_activation(lengths, views, guest_has_run=ran, covered=covered)
    assert list(short) == sorted(set(short))
    if ran or lengths is None:
        assert short == ()  # too late to stop it, or nothing known: never a guess
        return
    expected = {d for d, n in lengths if d in views and n < views[d]
                and not (d in covered and n >= covered[d])}
    assert set(short) == expected
    assert set(short) <= set(short_activation(lengths, views, guest_has_run=ran))


def test_short_activation_examples() -> None:
    assert short_activation((("vda", 196 * MiB),), {"vda": 540 * MiB},
                            guest_has_run=False) == ("vda",)
    assert short_activation((("vda", 540 * MiB),), {"vda": 540 * MiB},
                            guest_has_run=False) == ()
    assert short_activation((("vda", 196 * MiB),), {"vda": 540 * MiB},
                            guest_has_run=True) == ()
    assert short_activation(None, {"vda": 540 * MiB}, guest_has_run=False) == ()
    # Activated at the view refreshed while incoming: the source wrote nothing past it.
    assert short_activation((("vda", 64 * MiB),), {"vda": 96 * MiB}, guest_has_run=False,
                            covered={"vda": 64 * MiB}) == ()
    # Activated below even that view (stop 39's loss: the source wrote past the length).
    assert short_activation((("vda", 196 * MiB),), {"vda": 540 * MiB}, guest_has_run=False,
                            covered={"vda": 540 * MiB}) == ("vda",)


async def arrive(lengths: tuple[tuple[str, int], ...] | None, *, running: bool
                 ) -> tuple[Rig, Views]:
    """vm1 arrives here (first seen after its incoming migration completed), its view 256
    MiB, the volume 540 MiB in metadata (the source extended after this host's view was
    last refreshed); QEMU activated vda with ``lengths``."""
    rig, views = views_rig()
    rig.ext.metadata[VOL] = 540 * MiB
    arrive_paused(rig, MigrationInfo(Role.DESTINATION, Phase.COMPLETED, lengths))
    if running:
        rig.hv.vms["vm1"].running, rig.hv.vms["vm1"].reason = True, None
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: views.refreshed == [VOL], describe=rig.describe)
        await until(lambda: rig.monitor.idle(extensions=False), describe=rig.describe)
        tg.cancel_scope.cancel()
    return rig, views


async def test_an_arrival_activated_on_a_stale_view_is_stopped_before_it_runs() -> None:
    rig, _ = await arrive((("vda", 256 * MiB),), running=False)
    assert rig.hv.kills == ["vm1"], rig.describe()
    assert rig.hv.resumes == [] and rig.hv.thresholds == []


async def test_an_arrival_awaiting_activation_or_activated_on_the_view_runs_on() -> None:
    for lengths in (None, (("vda", 540 * MiB),)):  # late-block-activate; activated whole
        rig, _ = await arrive(lengths, running=False)
        assert rig.hv.kills == [], (lengths, rig.describe())
        assert rig.hv.thresholds != [], (lengths, rig.describe())


async def test_an_arrival_that_already_runs_is_not_stopped() -> None:
    rig, _ = await arrive((("vda", 256 * MiB),), running=True)
    assert rig.hv.kills == [], rig.describe()


async def test_an_arrival_activated_on_its_incoming_view_runs_on() -> None:
    """Stop 41's clean-clone failure (``tests/e2e/test_migration.py::
    test_local_migration_defers_source_refresh``): this host refreshed the view to 256 MiB
    while the migration was incoming; the source then extended to 540 MiB in metadata with
    its own view frozen (the guest paused for ENOSPC there, writing nothing past it); QEMU
    activated vda at 256 MiB. Nothing lies past that length, so the guest is not stopped."""
    rig, views = views_rig()
    rig.ext.metadata[VOL] = 256 * MiB
    arrive_paused(rig, MigrationInfo(Role.DESTINATION, Phase.ACTIVE), 64 * MiB)
    async with anyio.create_task_group() as tg:
        await tg.start(rig.monitor.run)
        await until(lambda: views.refreshed == [VOL], describe=rig.describe)
        await until(lambda: rig.monitor.idle(extensions=False), describe=rig.describe)
        rig.ext.metadata[VOL] = 540 * MiB  # the source's deferred extensions
        rig.hv.vms["vm1"].reason = PauseReason.ENOSPC
        rig.hv.migrate("vm1", MigrationInfo(Role.DESTINATION, Phase.COMPLETED,
                                            (("vda", 256 * MiB),)))
        await until(lambda: views.refreshed == [VOL, VOL], describe=rig.describe)
        await until(lambda: rig.monitor.idle(extensions=False), describe=rig.describe)
        tg.cancel_scope.cancel()
    assert rig.hv.kills == [], rig.describe()
