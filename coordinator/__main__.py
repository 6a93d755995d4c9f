"""``python -m coordinator``: the ``coordinator`` command."""

import sys

from coordinator.ops.cli import main

sys.exit(main())
