"""The cluster agent's extender exists before the agent runs: requests wait for the join."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from autoextend import settings as settings_mod
from autoextend.clock import MonotonicClock
from autoextend.cluster import AgentExtender, ClusterAgent
from autoextend.errors import ConfigError
from autoextend.lab.waiting import until
from autoextend.lease.config import LeaseSettings
from autoextend.monitor.protocols import ExtendOutcome, OutcomeKind
from autoextend.service import Service
from autoextend.validation import check_service, mailbox_mode_rule
from tests.doubles import no_spm_backend

from .fakes import FAST
from .pool import VG, MiB, Pool, serving, vol

# The agent's own sections must pass the one rule: the mailbox after the lease area.
AGENT_MAILBOX = FAST.model_copy(update={"offset": None})


def agent_for(pool: Pool) -> ClusterAgent:
    return ClusterAgent(LeaseSettings(path="/nonexistent/area", host_id=1), AGENT_MAILBOX, (VG,),
                        pool.backend, no_spm_backend, MonotonicClock())


async def test_a_request_before_the_join_waits_then_goes_through_the_mailbox() -> None:
    pool = Pool()
    agent = agent_for(pool)
    extender = agent.extender()  # before run(), as the service builds it
    outcomes: list[ExtendOutcome] = []
    async with serving(pool, 1) as (server, (host,)):
        async with anyio.create_task_group() as tg:
            async def ask() -> None:
                outcomes.append(await extender.extend(vol(1), 200 * MiB))

            tg.start_soon(ask)
            await anyio.wait_all_tasks_blocked()  # the request has run as far as it can
            assert outcomes == [] and host.counters.sent == 0 and server.counters.received == 0
            agent.mailbox = host  # what run() does once joined
            agent._joined_event().set()
            await until(lambda: outcomes, 30.0, "the extend outcome",
                        describe=lambda: server.counters.__dict__)
    assert outcomes[0].kind is OutcomeKind.OK and outcomes[0].size == 200 * MiB
    assert pool.backend.sizes[vol(1)] == 200 * MiB


def test_the_agent_refuses_sections_it_cannot_run_with() -> None:
    pool = Pool()
    with pytest.raises(ConfigError, match="lease.path"):
        ClusterAgent(LeaseSettings(host_id=1), FAST, (VG,), pool.backend, no_spm_backend,
                     MonotonicClock())
    with pytest.raises(ConfigError, match="lvm.vgs"):
        ClusterAgent(LeaseSettings(path="/a", host_id=1), FAST, (), pool.backend,
                     no_spm_backend, MonotonicClock())


@pytest.mark.parametrize("sections", [
    {"lease": {"host_id": 1}},
    {"lease": {"path": "/a", "host_id": 1}, "lvm": {"vgs": []}},
    {"lease": {"path": "/a", "host_id": 3}, "mailbox": {"max_hosts": 2}},
    {"lease": {"path": "/a", "host_id": 1}, "mailbox": {"path": "/b"}},
    {"lease": {"path": "/a", "host_id": 1}, "mailbox": {"offset": 4096}},
])
def test_the_agent_and_config_check_apply_one_rule(sections: dict[str, object]) -> None:
    """Whatever ``config check`` says about the agent's sections, the agent says the same."""
    s = settings_mod.from_mapping({"service": {"extender": "mailbox"},
                                   "lvm": {"vgs": [VG]}, **sections})
    with pytest.raises(ConfigError) as checked:
        check_service(s)
    with pytest.raises(ConfigError) as refused:
        ClusterAgent(s.lease, s.mailbox, s.lvm.vgs, Pool().backend, no_spm_backend,
                     MonotonicClock())
    assert refused.value.problems == list(mailbox_mode_rule(s))
    assert set(refused.value.problems) <= set(checked.value.problems)


def test_the_service_wires_the_agent_extender_into_the_monitor_at_construction(
    tmp_path: Path,
) -> None:
    s = settings_mod.from_mapping({
        "service": {"extender": "mailbox"},
        "volumes": {"backend": "loop", "loop_root": str(tmp_path)},
        "lease": {"path": "/dev/shared-area", "host_id": 3},
        "lvm": {"vgs": ["vg0"]},
    })
    service = Service(s)
    assert isinstance(service.extender, AgentExtender)
    assert service.cluster is not None
    assert service.cluster.lease_config is s.lease and service.cluster.vgs == ("vg0",)
    assert service.monitor.extender is service.extender  # no placeholder, nothing to swap
