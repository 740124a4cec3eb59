"""``python -m autoextend`` is the ``autoextend`` command (signals are held first: see
:mod:`autoextend.cli.entry`)."""

import sys

from autoextend.cli.entry import main

sys.exit(main())
