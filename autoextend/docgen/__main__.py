"""``python -m autoextend.docgen config|man5|man8``: print one generated document."""

from __future__ import annotations

import sys


def generate(what: str) -> str:
    """The text of one generated document; ValueError for an unknown name."""
    from autoextend.docgen import keys, markdown, roff

    if what == "config":
        return markdown.render(keys.sections())
    if what == "man5":
        return roff.man5(keys.sections())
    if what == "man8":
        from autoextend.cli.main import cli

        return roff.man8(cli)
    raise ValueError(f"unknown document {what!r}: config, man5 or man8")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m autoextend.docgen config|man5|man8", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(generate(argv[0]))
    except ValueError as exc:
        print(f"docgen: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
