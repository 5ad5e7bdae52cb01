"""``python -m lorakit ...``: the console script, also for ``accelerate launch -m lorakit train``."""

import sys

from .cli import main

sys.exit(main())
