"""``python -m lorakit ...``: the console script, also for ``accelerate launch -m lorakit train``."""

import sys

from .app.cli import main

sys.exit(main())
