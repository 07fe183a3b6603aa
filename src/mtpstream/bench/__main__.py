"""``python -m mtpstream.bench`` (the same as ``mtpstream bench``)."""

import sys

from .runner import main

sys.exit(main())
