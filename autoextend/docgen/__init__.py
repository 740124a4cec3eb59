"""Generated documentation: the configuration reference and the man pages.

``python -m autoextend.docgen config > docs/config.md`` (the reference), ``man5 >
man/autoextend.toml.5`` and ``man8 > man/autoextend.8``. The keys come from the settings models
(:mod:`autoextend.config` composes the sections that live next to their components), their
descriptions from the documented default file (``config/autoextend.toml``) or the comments next
to each field; the commands from the click tree. tests/docs/ checks the committed files against
this output.
"""
