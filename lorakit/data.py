"""The old name of ``lorakit.tasks`` (built-in tasks): ``lorakit.data`` is that same module.

``import lorakit.data`` and ``from lorakit.data import Task`` keep working; new code imports
``lorakit.tasks`` (``lk.tasks``).
"""

import sys

from . import tasks as _tasks

sys.modules[__name__] = _tasks
