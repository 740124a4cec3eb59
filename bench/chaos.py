"""``make chaos``: the chaos soak of the real system (``autoextend/lab/chaos.py``).

    python -m bench.chaos [--seed N] [--duration 600] [--hosts 3] [--guests 4]
                          [--max-mib 1024] [--mutant term_check,protect_views]
                          [--kinds K,...] [--out DIR]

3 ``autoextend run`` hosts in mailbox mode, TCG guests writing the verifiable pattern, and
a seeded schedule of host kills, SPM freezes and kills, step-downs, config reloads (some
broken), a full VG, EIO on a guest's volume and live migrations. Each guest writes at
most ``--max-mib`` (a long soak writes at lower rates). Without ``--seed`` a random seed is
chosen and printed first. Writes ``chaos-<seed>.json`` and ``chaos-<seed>.md`` (one page:
the faults, the pauses, extension latencies under fault, every invariant violation, and the
line that replays the run) under ``--out`` (default ``bench/results/``), and prints the summary
block (faults, pauses, worst pause, extensions, violations). Exit 0 when every invariant
held, 1 when one did not, 2 for bad arguments.

``--mutant`` runs every host with those safety checks off (``sim/mutant_service.py``): the
mutation check, which must end in a violation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from autoextend import logs
from autoextend.checks import Checks
from autoextend.lab.chaos import MAX_MIB, SoakConfig, SoakReport, soak
from autoextend.lab.chaos_plan import FAULT_KINDS
from bench import results_file


def worst_pause(report: SoakReport) -> float | None:
    """The longest ended pause, leaving out a ``migration`` pause: the source's switchover
    (its QEMU then stops), not a pause the guest feels beyond the migration's downtime."""
    durations = [p["duration_s"] for p in report.pauses
                 if p["duration_s"] is not None and p["reason"] != "migration"]
    return max(durations) if durations else None


def summary(report: SoakReport) -> str:
    """The summary block (for the README): faults injected, pauses, worst pause,
    extensions, invariant violations."""
    cfg = report.config
    kinds = Counter(f.kind for f in report.faults)
    reasons = Counter(p["reason"] for p in report.pauses)
    worst = worst_pause(report)
    ext = report.extensions
    lines = [
        f"Chaos soak, seed {cfg['seed']}: {cfg['hosts']} hosts, {cfg['guests']} guests, "
        f"{cfg['duration_s']:g} s of faults: {'PASSED' if report.passed else 'FAILED'}",
        f"- faults injected: {len(report.faults)} ("
        + ", ".join(f"{n} {k}" for k, n in kinds.most_common()) + ")",
        f"- pauses: {len(report.pauses)}"
        + (" (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")"
           if reasons else ""),
        "- worst pause: " + ("-" if worst is None else f"{worst:.2f} s")
        + (" (migration switchovers left out)" if reasons.get("migration") else ""),
        f"- extensions: {ext.get('count', 0)} seen by the monitors, "
        f"{ext.get('spm_changes', 0)} made by the SPMs; threshold to re-armed p50 "
        f"{_s(ext.get('p50_s'))}, p99 {_s(ext.get('p99_s'))}",
        f"- invariant violations: {len(report.violations)}",
        *guest_crash_lines(report),
        f"- replay: {report.replay}",
    ]
    return "\n".join(lines) + "\n"


def guest_crash_lines(report: SoakReport) -> list[str]:
    """The summary's line for guests whose kernel crashed (none: no line)."""
    crashes = report.guest_crashes
    if not crashes:
        return []
    read = sum(1 for c in crashes.values() if c["verified"] is True)
    return [f"- guest kernel crashes: {len(crashes)} (not storage; what they wrote read "
            f"back intact by a second boot: {read} of {len(crashes)})"]


def render(report: SoakReport) -> str:
    """The one-page Markdown report."""
    cfg = report.config
    lines = [
        f"# Chaos soak, seed {cfg['seed']}: {'PASSED' if report.passed else 'FAILED'}",
        "",
        f"{cfg['hosts']} hosts, {cfg['guests']} guests, {cfg['duration_s']:g} s of faults, "
        f"{report.elapsed_s:g} s in all; chunk {cfg['chunk_mib']} MiB; at most "
        f"{cfg.get('max_mib', '-')} MiB written per guest (rates x{cfg.get('rate_scale', 1)})."
        + (f" Mutant: checks off {cfg['mutant']}." if cfg["mutant"] else ""),
        "",
        f"Replay: `{report.replay}`",
        "",
        "## Summary",
        "",
        "```",
        summary(report).rstrip("\n"),
        "```",
        "",
        "## Invariant violations",
        "",
    ]
    lines += [f"- {v}" for v in report.violations] or ["None."]
    lines += ["", f"## Faults ({len(report.faults)})", "",
              "| at s | kind | target | held s | detail |", "|---|---|---|---|---|"]
    for f in report.faults:
        lines.append(f"| {f.start_s:.1f} | {f.kind} | {f.target} | "
                     f"{f.end_s - f.start_s:.1f} | {f.detail} |")
    lines += ["", f"## Pauses ({len(report.pauses)})", ""]
    if report.pauses:
        worst = worst_pause(report)
        lines.append(f"Worst pause: {worst:.2f} s." if worst is not None else
                     "No pause ended.")
        lines += ["", "| at s | vm | host | reason | duration s |", "|---|---|---|---|---|"]
        for p in report.pauses:
            d = ("switchover" if p["reason"] == "migration" else "open") \
                if p["duration_s"] is None else f"{p['duration_s']:.2f}" + (
                    " (left the host)" if p.get("gone") else
                    " (its host restarted)" if p.get("restarted") else "")
            lines.append(f"| {p['at_s']:.1f} | {p['vm']} | {p['host']} | {p['reason']} | "
                         f"{d} |")
    else:
        lines.append("None.")
    ext = report.extensions
    lines += ["", "## Extensions", "",
              f"{ext.get('count', 0)} extensions seen by the hosts' monitors, "
              f"{ext.get('spm_changes', 0)} changes made by the SPMs; threshold to re-armed: "
              f"p50 {_s(ext.get('p50_s'))}, p99 {_s(ext.get('p99_s'))}, "
              f"max {_s(ext.get('max_s'))}.", "",
              "## Guests", "", "| guest | host | MiB | KiB/s | verified | size | check |",
              "|---|---|---|---|---|---|---|"]
    for name, g in sorted(report.guests.items()):
        lines.append(f"| {name} | {g['host']} | {g['mib']} | {g['rate_kib_s']} | "
                     f"{g['verified']} | {g['size']} | "
                     f"{'clean' if g['qemu_img_check_clean'] else 'NOT clean'} |")
    if report.guest_crashes:
        lines += ["", "## Guest kernel crashes (apart from the invariants)", "",
                  "A kernel crash is in the guest's RAM (it runs from its initramfs; its disk "
                  "only holds the data it writes). Its QEMU was stopped, and a second boot on "
                  "the same view read back what it had reported written; a read-back that "
                  "fails is an invariant violation above.", "",
                  "| guest | crash | MiB written | read back |", "|---|---|---|---|"]
        for name, c in sorted(report.guest_crashes.items()):
            back = {True: "intact", False: "DOES NOT VERIFY", None: "-"}[c["verified"]]
            lines.append(f"| {name} | {c['crash']} | {c['written_mib']} | {back} |")
    if report.late_guests:
        lines += ["", "## Guests slower than planned (still writing at their finish time; "
                  "given more time while they moved)", ""]
        lines += [f"- {name}: {mib} MiB written when the first wait ran out"
                  for name, mib in sorted(report.late_guests.items())]
    if report.unexpected_exits:
        lines += ["", "## Host exits outside a fault (restarted)", ""]
        lines += [f"- {x}" for x in report.unexpected_exits]
    return "\n".join(lines) + "\n"


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.3f} s"


def write(report: SoakReport, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"chaos-{report.config['seed']}" + ("-mutant" if report.config["mutant"] else "")
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    js.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    md.write_text(render(report))
    return js, md


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of faults")
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--guests", type=int, default=4)
    parser.add_argument("--max-mib", type=int, default=MAX_MIB,
                        help="what one guest writes at most, MiB (a long soak scales the "
                             "write rates down to fit)")
    parser.add_argument("--mutant", default="", help="Checks fields to turn off, comma-separated")
    parser.add_argument("--kinds", default=",".join(FAULT_KINDS),
                        help="fault kinds to schedule, comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=results_file("x").parent)
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    known = {f.name for f in dataclasses.fields(Checks)}
    args.mutant = tuple(m for m in args.mutant.split(",") if m)
    if not set(args.mutant) <= known:
        parser.error(f"--mutant: unknown check(s) {sorted(set(args.mutant) - known)}")
    args.kinds = tuple(k for k in args.kinds.split(",") if k)
    if not args.kinds or not set(args.kinds) <= set(FAULT_KINDS):
        parser.error(f"--kinds: choose from {', '.join(FAULT_KINDS)}")
    if not 2 <= args.hosts <= 8:
        parser.error("--hosts must be 2..8")
    if not 1 <= args.guests <= 12:
        parser.error("--guests must be 1..12")
    if not 10 <= args.duration <= 24 * 3600:
        parser.error("--duration must be 10..86400 seconds")
    if not 64 <= args.max_mib <= 1 << 20:
        parser.error("--max-mib must be 64..1048576")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    cfg = SoakConfig(seed=args.seed, duration_s=args.duration, hosts=args.hosts,
                     guests=args.guests, mutant=args.mutant, kinds=args.kinds,
                     max_mib=args.max_mib)
    print(f"chaos soak: seed {cfg.seed}; replay: {cfg.replay()}", flush=True)
    logs.configure("warning", "json")
    report = anyio.run(soak, cfg)
    js, md = write(report, args.out)
    print(render(report))
    print(summary(report))
    print(f"written: {js} {md}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
