"""``python -m coordinator``: the ``coordinator`` command."""

import sys

from coordinator.ops.arguments import main

sys.exit(main())
