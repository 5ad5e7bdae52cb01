"""How make test shares the cores between its pytest-xdist workers (used by conftest.py)."""


def worker_threads(workers: int, cores: int) -> int:
    """torch threads for each of ``workers`` pytest-xdist workers sharing ``cores``: their share,
    at least one. Two processes with two threads each on two cores were 3-10x slower than one
    thread each (see ``one_thread``)."""
    return max(1, cores // max(1, workers))


# Seconds each long test file or notebook took in one make test run (2026-12-02, fresh clone,
# two workers, one torch thread each; benchmarks/suite_time.py prints this table for a run).
# Only the order matters: make test hands the files to its two workers longest first
# (``longest_first``), so that no long notebook starts last and runs alone while the other
# worker idles (list scheduling, LPT). Files not listed took under 20 s and follow in
# collection order. In pytest-xdist's own order (by number of tests per file) one worker idled
# at the end: 20.8 min on a slow machine draw; this order: 20.1 min there, 21 s above half the
# item time (benchmarks/RESULTS.md, "Whole test suite").
FILE_SECONDS = {
    # estimates for files added since that run (one worker, the machine shared): the dark-theme
    # lab run of five tutorials, the site build and its pages, the family matrix
    "tests/browser/test_lab_theme.py": 400,
    "tests/browser/test_site.py": 120,
    "tests/test_families.py": 75,
    "notebooks/07_variants.ipynb": 201,
    "tests/app/test_cli.py": 114,
    "notebooks/06_what_lora_learns.ipynb": 108,
    "notebooks/05_merge_swap_serve.ipynb": 101,
    "notebooks/08_practical.ipynb": 96,
    "notebooks/03_train_and_watch.ipynb": 91,
    "notebooks/04_qlora.ipynb": 84,
    "tests/browser/test_lab_figures.py": 69,
    "notebooks/00_start_here.ipynb": 56,
    "tests/view/test_widgets.py": 37,
    "tests/files/test_animate.py": 33,
    "tests/core/test_models.py": 30,
    "tests/core/test_distributed.py": 22,
    "tests/core/test_train.py": 21,
    "tests/core/test_experiments.py": 21,
    "tests/core/test_analysis.py": 21,
    "tests/core/test_serve.py": 20,
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
