"""lorakit's applications: the ``lorakit`` command (``lorakit tour``, ``lorakit train``).
Imports every layer below it.
"""
