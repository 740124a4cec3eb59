"""``autoextend run`` with named safety checks off: the chaos soak's mutation check.

    python -m sim.mutant_service --off term_check[,protect_views] --config FILE \\
        [--log-format json] [--log-level info] run

It runs the real service (:func:`autoextend.service.serve`) on a config file, as
``autoextend run`` does, but builds its :class:`~autoextend.checks.Checks` with the named
fields off. Only ``sim/`` and ``tests/`` may build such a value (``tests/test_layers.py``);
the soak (``bench/chaos.py --mutant``) starts its hosts with this module to show that its
invariants catch the bug each check prevents. Never run it on a real pool.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from autoextend import earlysignals


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sim.mutant_service",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--off", required=True,
                        help="comma-separated Checks fields to turn off")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--log-format", default="json", choices=["json", "console", "auto"])
    parser.add_argument("--log-level", default="info")
    parser.add_argument("command", choices=["run"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    earlysignals.hold()
    args = parse(sys.argv[1:] if argv is None else argv)
    import anyio

    from autoextend import logs, settings, validation
    from autoextend.checks import Checks
    from autoextend.errors import AutoextendError
    from autoextend.service import serve

    names = [n.strip() for n in args.off.split(",") if n.strip()]
    known = {f.name for f in dataclasses.fields(Checks)}
    unknown = sorted(set(names) - known)
    if unknown or not names:
        print(f"--off: unknown check(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    logs.configure(args.log_level, args.log_format)
    try:
        loaded = settings.load(args.config)
        validation.check_service(loaded, str(args.config))
    except AutoextendError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    checks = Checks(**dict.fromkeys(names, False))
    logs.get_logger("sim.mutant").warning("running with safety checks OFF (mutation check)",
                                          off=names)
    anyio.run(serve, loaded, args.config, None, checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
