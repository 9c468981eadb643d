"""``python -m broker.cli ...``: the ``broker`` command without the console script."""

import sys

from broker.cli import main

sys.exit(main())
