"""``python -m invaspread ...`` (and ``torchrun -m invaspread ...``): the same as the ``invaspread`` command."""

import sys

from .cli import main

sys.exit(main())
