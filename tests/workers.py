"""How make test shares the cores between its pytest-xdist workers (used by conftest.py)."""


def worker_threads(workers: int, cores: int) -> int:
    """torch threads for each of ``workers`` pytest-xdist workers sharing ``cores``: their share,
    at least one. Two processes with two threads each on two cores were 3-10x slower than one
    thread each (see ``one_thread``)."""
    return max(1, cores // max(1, workers))
