"""How make test shares the cores between its pytest-xdist workers (used by conftest.py)."""


def worker_threads(workers: int, cores: int) -> int:
    """torch threads for each of ``workers`` pytest-xdist workers sharing ``cores``: their share,
    at least one. Two processes with two threads each on two cores were 3-10x slower than one
    thread each (see ``one_thread``)."""
    return max(1, cores // max(1, workers))


# Seconds each long test file or notebook took in one make test run (2026-12-06, fresh clone,
# two workers, one torch thread each; benchmarks/suite_time.py prints this table for a run).
# Only the order matters: make test hands the files to its two workers longest first
# (``longest_first``), so that no long notebook starts last and runs alone while the other
# worker idles (list scheduling, LPT). Files not listed took under 20 s and follow in
# collection order. In pytest-xdist's own order (by number of tests per file) one worker idled
# at the end: 20.8 min on a slow machine draw; this order: 20.1 min there, 21 s above half the
# item time (benchmarks/RESULTS.md, "Whole test suite").
FILE_SECONDS = {
    "tests/browser/test_lab_theme.py": 501,
    "notebooks/08_practical.ipynb": 196,
    "notebooks/07_variants.ipynb": 182,
    "notebooks/05_merge_swap_serve.ipynb": 147,
    "notebooks/03_train_and_watch.ipynb": 95,
    "notebooks/06_what_lora_learns.ipynb": 94,
    "tests/app/test_cli.py": 92,
    "notebooks/04_qlora.ipynb": 88,
    "tests/core/test_models.py": 71,
    "notebooks/09_your_data_your_model.ipynb": 70,
    "tests/browser/test_site.py": 68,
    "tests/browser/test_lab_figures.py": 60,
    "notebooks/00_start_here.ipynb": 41,
    "tests/view/test_widgets.py": 38,
    "tests/files/test_animate.py": 34,
    "tests/core/test_experiments.py": 27,
    "tests/core/test_train.py": 26,
    "tests/test_families.py": 26,
    "tests/core/test_precision.py": 25,
}


def longest_first(nodeids: list[str]) -> list[int]:
    """The order (indices into ``nodeids``) that runs whole files longest first by
    ``FILE_SECONDS``: a stable sort, so each file's tests stay together and in their order."""
    first: dict[str, int] = {}
    for i, nodeid in enumerate(nodeids):
        first.setdefault(nodeid.split("::")[0], i)

    def key(i: int) -> tuple[int, int, int]:
        path = nodeids[i].split("::")[0]
        return -FILE_SECONDS.get(path, 0), first[path], i

    return sorted(range(len(nodeids)), key=key)
