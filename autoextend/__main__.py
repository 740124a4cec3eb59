"""``python -m autoextend`` is the ``autoextend`` command."""

import sys

from autoextend.cli.main import main

sys.exit(main())
