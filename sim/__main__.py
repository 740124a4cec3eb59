"""``python -m sim --seed S --hosts N --duration D``: run seeded worlds, print the summary; a
failing seed prints its trace tail and the command that replays it (exit 1)."""

from __future__ import annotations

import argparse
import random
import sys

from sim.config import MUTATIONS, SimConfig, parse_priorities
from sim.run import run_world


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    p.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    p.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed on")
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--duration", type=float, default=20_000.0,
                   help="simulated seconds of faults (a quiet tail follows)")
    p.add_argument("--fault-gap", type=float, default=150.0,
                   help="mean simulated seconds between faults")
    p.add_argument("--mutation", choices=MUTATIONS, default=None,
                   help="disable one safety check (the simulation must then fail)")
    p.add_argument("--priorities", default="",
                   help="[lease] spm_priority of hosts 1, 2, ... (e.g. 0,5,never)")
    p.add_argument("--elections", type=int, default=0,
                   help="no faults: step the SPM down this many times, check the winners")
    p.add_argument("--tail", type=int, default=60, help="trace lines printed on failure")
    args = p.parse_args(argv)
    try:
        priorities = parse_priorities(args.priorities) if args.priorities else ()
    except ValueError as err:
        print(f"--priorities: {err}", file=sys.stderr)
        return 2
    if not 1 <= args.hosts <= 2000:
        print("--hosts must be 1..2000", file=sys.stderr)
        return 2
    if args.duration <= 0 or args.seeds < 1 or args.fault_gap <= 0:
        print("--duration and --fault-gap must be > 0, --seeds >= 1", file=sys.stderr)
        return 2
    first = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    failed = 0
    total = 0.0
    for seed in range(first, first + args.seeds):
        result = run_world(SimConfig(seed=seed, hosts=args.hosts, duration=args.duration,
                                     fault_gap_s=args.fault_gap, mutation=args.mutation,
                                     priorities=priorities, elections=args.elections))
        total += result.sim_seconds
        print(result.summary(), flush=True)
        if not result.ok:
            failed += 1
            print(result.report(args.tail), flush=True)
    print(f"{args.seeds} seeds, {total:.0f} simulated seconds, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
