"""``python -m mtpstream``: the ``mtpstream`` command."""

from .cli import main

raise SystemExit(main())
