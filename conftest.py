"""pytest hooks for the whole repository: unit tests (tests/) and notebooks (nbval, notebooks/).

One time limit: `timeout` in pyproject.toml ([tool.pytest.ini_options]), or `--timeout` on the
command line. pytest-timeout applies it to unit tests. Notebook cells get it as nbval's own cell
timeout, which interrupts the kernel and skips the rest of the notebook, and pytest-timeout is
kept off them: two limits on one cell is how a 1200 s cell timeout was silently cut to 600 s.
"""

from __future__ import annotations

import pytest


def time_limit(config: pytest.Config) -> float | None:
    """The configured limit in seconds (None if pytest-timeout is not installed or none is set)."""
    try:
        value = config.getoption("timeout", None) or config.getini("timeout")
        return float(value) if value else None
    except (ValueError, TypeError):
        return None


def is_notebook_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell"  # nbval's item: one notebook cell


def pytest_configure(config: pytest.Config) -> None:
    limit = time_limit(config)
    if limit and hasattr(config.option, "nbval_cell_timeout"):
        config.option.nbval_cell_timeout = limit


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: it must see the `timing` mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_notebook_cell(item):
            item.add_marker(pytest.mark.timeout(0))  # nbval's cell timeout is the limit here
            item.add_marker(pytest.mark.timing)  # a notebook measures speed: never beside other tests
