"""The ``autoextend`` command line: one module per command group."""
