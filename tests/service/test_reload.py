"""A reload applies what it can and names the keys that need a restart (log and status);
``status`` never shows a value that is not in effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from autoextend import logs
from autoextend import reload as reload_mod
from autoextend import settings as settings_mod
from autoextend.cli.service import render_status
from autoextend.errors import AutoextendError
from autoextend.service import ReloadOutcome, Service

MiB = 1 << 20


def base(tmp_path: Path) -> dict[str, Any]:
    return {
        "service": {"hypervisor": "qmp", "control_socket": str(tmp_path / "ctl.sock")},
        "qmp": {"socket_glob": str(tmp_path / "qmp" / "*.sock")},
        "volumes": {"backend": "loop", "loop_root": str(tmp_path / "volumes")},
        "policy": {"chunk_mib": 256},
    }


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


@pytest.fixture(autouse=True)
def log_settings(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What reload() sets the log level and format to (capture_logs keeps capturing)."""
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(logs, "configure", lambda level, fmt: seen.append((level, fmt)))
    return seen


def service_for(tmp_path: Path, data: dict[str, Any]) -> tuple[Service, Path]:
    path = write(tmp_path / "autoextend.toml", data)
    return Service(settings_mod.load(path), config_path=path), path


def test_the_plan_applies_live_keys_and_keeps_fixed_ones() -> None:
    old = settings_mod.from_mapping({"policy": {"chunk_mib": 256, "vg_reserve_mib": {"vg": 8}}})
    new = settings_mod.from_mapping({
        "policy": {"chunk_mib": 512, "vg_reserve_mib": {"vg": 16}, "extent_mib": 4},
        "service": {"dry_run": True, "hypervisor": "qmp"},
        "resume": {"policy": "leave"},
        "lease": {"host_id": 2},
    })
    plan = reload_mod.plan(old, new)
    assert plan.applied == ("policy.chunk_mib", "resume.policy", "service.dry_run")
    assert plan.needs_restart == ("lease.host_id", "policy.extent_mib", "policy.vg_reserve_mib.vg",
                                  "service.hypervisor")
    now = plan.effective
    assert now.policy.chunk_mib == 512 and now.service.dry_run and now.resume.policy == "leave"
    assert now.policy.vg_reserve_mib == {"vg": 8} and now.policy.extent_mib == 128
    assert now.service.hypervisor == old.service.hypervisor and now.lease == old.lease
    # nothing changed: nothing to say
    same = reload_mod.plan(now, now)
    assert same.applied == () and same.needs_restart == () and same.effective == now


@given(chunk=st.integers(1, 4096), glob=st.sampled_from(["/a/*.sock", "/b/*.sock"]),
       dry=st.booleans())
def test_the_effective_config_takes_every_live_key_and_no_other(
    chunk: int, glob: str, dry: bool
) -> None:
    old = settings_mod.from_mapping({"qmp": {"socket_glob": "/a/*.sock"}})
    new = settings_mod.from_mapping({"qmp": {"socket_glob": glob}, "policy": {"chunk_mib": chunk},
                                     "service": {"dry_run": dry}})
    plan = reload_mod.plan(old, new)
    after = reload_mod.flatten(plan.effective.model_dump())
    file = reload_mod.flatten(new.model_dump())
    before = reload_mod.flatten(old.model_dump())
    for key in after:
        assert after[key] == (file[key] if reload_mod.is_live(key) else before[key]), key
    # the restart list is exactly the fixed keys where the file and the running config differ
    assert list(plan.needs_restart) == [k for k in sorted(file) if not reload_mod.is_live(k)
                                        and file[k] != after[k]]


async def test_reload_applies_what_it_can_and_says_what_needs_a_restart(
    tmp_path: Path, log_settings: list[tuple[str, str]]
) -> None:
    data = base(tmp_path)
    service, path = service_for(tmp_path, data)
    started = service.settings
    changed = base(tmp_path)
    changed["policy"] = {"chunk_mib": 512, "vg_reserve_mib": {"vg0": 64}}
    changed["service"]["dry_run"] = True
    changed["service"]["log_level"] = "debug"
    changed["service"]["control_socket"] = str(tmp_path / "other.sock")
    changed["qmp"]["socket_glob"] = "/elsewhere/*.sock"
    write(path, changed)
    with capture_logs() as logs:
        assert service.reload() is ReloadOutcome.APPLIED
    # applied: the monitor runs with the new policy and dry-run
    assert service.monitor.settings.chunk_mib == 512 and service.monitor.dry_run
    # not applied: the running values stay, and status shows those
    assert service.settings.service.control_socket == started.service.control_socket
    assert service.settings.qmp.socket_glob == started.qmp.socket_glob
    assert service.settings.policy.vg_reserve_mib == {}
    needs = ["policy.vg_reserve_mib.vg0", "qmp.socket_glob", "service.control_socket"]
    (line,) = [e for e in logs if e["event"] == "config reloaded; some changes need a restart"]
    assert line["log_level"] == "warning" and line["needs_restart"] == needs
    assert line["applied"] == ["policy.chunk_mib", "service.dry_run", "service.log_level"]
    assert log_settings == [("debug", "auto")]
    status = await service._status({})
    assert status["config"]["pending_restart"] == needs and status["config"]["reloads"] == 1
    assert status["service"]["dry_run"] is True
    shown = render_status(status)
    assert "RESTART NEEDED: the config file changes policy.vg_reserve_mib.vg0, qmp.socket_glob" \
        in shown
    assert ", DRY RUN" in shown

    # the file goes back for the fixed keys (over the control socket): nothing is pending
    changed["service"]["control_socket"] = data["service"]["control_socket"]
    changed["qmp"]["socket_glob"] = data["qmp"]["socket_glob"]
    changed["policy"].pop("vg_reserve_mib")
    write(path, changed)
    with capture_logs() as logs:
        reply = await service._reload({})
    assert reply["pending_restart"] == [] and reply["applied"] == [] and reply["reloads"] == 2
    assert [e["log_level"] for e in logs if e["event"] == "config reloaded"] == ["info"]
    assert "RESTART NEEDED" not in render_status(await service._status({}))


async def test_an_invalid_file_changes_nothing(tmp_path: Path) -> None:
    service, path = service_for(tmp_path, base(tmp_path))
    before = service.settings
    path.write_text("[policy]\nchunk_mib = 0\n")
    with capture_logs() as logs:
        assert service.reload() is ReloadOutcome.FAILED
        with pytest.raises(AutoextendError, match="invalid"):
            await service._reload({})
    assert service.settings is before and service.monitor.settings.chunk_mib == 256
    assert [e["event"] for e in logs].count("config reload failed; keeping the old config") == 2
    assert (await service._status({}))["config"]["reloads"] == 0


async def test_a_reloaded_extend_timeout_is_the_extension_deadline_in_local_mode(
    tmp_path: Path,
) -> None:
    data = base(tmp_path)
    service, path = service_for(tmp_path, data)
    assert service.monitor.extend_deadline_s == 60.0
    data["policy"]["extend_timeout_s"] = 5.0
    write(path, data)
    assert service.reload() is ReloadOutcome.HELD  # 60 -> 5 s: more than x4
    assert service.monitor.extend_deadline_s == 60.0
    assert service.reload(confirm=True) is ReloadOutcome.APPLIED
    assert service.monitor.extend_deadline_s == 5.0 and service.pending_restart == ()


# ---- a reload that looks half-written is held back until confirmed -------------------------

FULL = """\
[service]
hypervisor = "qmp"
control_socket = "{d}/ctl.sock"
[qmp]
socket_glob = "{d}/qmp/*.sock"
[volumes]
backend = "loop"
loop_root = "{d}/volumes"
[resume]
policy = "leave"
[policy]
chunk_mib = 128
utilization_percent = 50
"""


def full_file(tmp_path: Path) -> tuple[Service, Path, str]:
    path = tmp_path / "autoextend.toml"
    text = FULL.format(d=tmp_path)
    path.write_text(text)
    return Service(settings_mod.load(path), config_path=path), path, text


def cut_before(text: str, header: str) -> str:
    return text[: text.index(header)]


async def test_a_file_cut_before_its_policy_is_held_and_a_second_sighup_confirms(
    tmp_path: Path,
) -> None:
    service, path, text = full_file(tmp_path)
    running = service.settings
    path.write_text(cut_before(text, "[policy]"))
    with capture_logs() as logs:
        assert service.reload() is ReloadOutcome.HELD
    assert service.settings is running and service.monitor.settings.chunk_mib == 128
    (line,) = [e for e in logs if e["event"] ==
               "config reload held back until confirmed; keeping the running config"]
    assert line["log_level"] == "warning"
    assert line["held"] == [
        "policy.chunk_mib: 128 -> 2560 (held: not in the file, so the default)",
        "policy.utilization_percent: 50 -> 20 (held: not in the file, so the default)",
    ]
    assert line["held_keys"] == ["policy.chunk_mib", "policy.utilization_percent"]
    status = await service._status({})
    assert status["config"]["held"]["held_keys"] == line["held_keys"]
    assert "RELOAD HELD: the config file looks half-written (2 key(s): policy.chunk_mib," \
        in render_status(status)
    # The second SIGHUP with the same bytes is the confirmation.
    with capture_logs() as logs:
        assert service.reload() is ReloadOutcome.APPLIED
    assert service.monitor.settings.chunk_mib == 2560 and service.held is None
    (done,) = [e for e in logs if e["event"] == "config reloaded"]
    assert done["confirmed"] == line["held"]
    assert (await service._status({}))["config"]["held"] is None


async def test_a_file_that_changed_again_is_not_a_confirmation(tmp_path: Path) -> None:
    service, path, text = full_file(tmp_path)
    path.write_text(cut_before(text, "[policy]"))
    assert service.reload() is ReloadOutcome.HELD
    path.write_text(cut_before(text, "[resume]"))  # still being written: another prefix
    assert service.reload() is ReloadOutcome.HELD
    assert service.monitor.settings.chunk_mib == 128 and service.settings.resume.policy == "leave"
    # The whole file again: nothing changes, and nothing is held any more.
    path.write_text(text)
    assert service.reload() is ReloadOutcome.APPLIED
    assert service.held is None and service.reload_applied == ()


async def test_reload_confirm_over_the_control_socket_handler(tmp_path: Path) -> None:
    service, path, text = full_file(tmp_path)
    path.write_text(text.replace("chunk_mib = 128", "chunk_mib = 1024"))  # x8
    reply = await service._reload({})
    assert reply["outcome"] == "held"
    assert reply["held"]["held"] == ["policy.chunk_mib: 128 -> 1024 (held: moves more than x4)"]
    assert service.monitor.settings.chunk_mib == 128
    reply = await service._reload({"confirm": True})
    assert reply["outcome"] == "applied" and reply["held"] is None
    assert reply["applied"] == ["policy.chunk_mib"] and service.monitor.settings.chunk_mib == 1024
    with pytest.raises(AutoextendError, match="confirm must be true or false"):
        await service._reload({"confirm": "yes"})


async def test_ordinary_edits_apply_at_once(tmp_path: Path) -> None:
    service, path, text = full_file(tmp_path)
    path.write_text(text.replace("chunk_mib = 128", "chunk_mib = 256")
                    .replace('policy = "leave"', 'policy = "auto"') + "retry_max_s = 10.0\n")
    assert service.reload() is ReloadOutcome.APPLIED
    assert service.reload_applied == ("policy.chunk_mib", "policy.retry_max_s", "resume.policy")


async def test_the_running_factor_decides_not_the_new_files(tmp_path: Path) -> None:
    service, path, text = full_file(tmp_path)
    path.write_text(text.replace("chunk_mib = 128", "chunk_mib = 1024").replace(
        'hypervisor = "qmp"', 'hypervisor = "qmp"\nreload_max_factor = 10.0'))
    assert service.reload() is ReloadOutcome.HELD  # x8 > the running 4
    assert service.reload(confirm=True) is ReloadOutcome.APPLIED
    assert service.settings.service.reload_max_factor == 10.0  # live: in effect now
    path.write_text(text.replace("chunk_mib = 128", "chunk_mib = 8192").replace(
        'hypervisor = "qmp"', 'hypervisor = "qmp"\nreload_max_factor = 10.0'))
    assert service.reload() is ReloadOutcome.APPLIED  # x8 from 1024: within 10


async def test_the_config_request_gives_the_running_config_and_the_overrides(
    tmp_path: Path,
) -> None:
    path = tmp_path / "autoextend.toml"
    path.write_text(FULL.format(d=tmp_path))
    overrides = {"service": {"log_format": "json"}}
    service = Service(settings_mod.with_overrides(settings_mod.load(path), overrides),
                      config_path=path, overrides=overrides)
    reply = await service._config({})
    assert settings_mod.Settings.model_validate_json(
        __import__("json").dumps(reply["running"])) == service.settings
    assert reply["overrides"] == overrides and reply["held"] is None
