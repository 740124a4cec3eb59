"""The ``autoextend`` entry point (console script and ``python -m autoextend``).

It imports only :mod:`autoextend.earlysignals` before it holds SIGHUP, SIGTERM and SIGINT
for ``run``; everything else (click, pydantic, the service) is imported after that.
"""

from __future__ import annotations

import sys

from autoextend import earlysignals


def main() -> int:
    if earlysignals.command_of(sys.argv[1:]) == "run":
        earlysignals.hold()
    from autoextend.cli.main import main as cli_main

    return cli_main()
