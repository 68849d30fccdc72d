"""Where a log line goes: Prefect's run logger inside a flow or task run (its lines reach the UI
and the run's log file), a plain logger of the same name outside one (benchmarks and tests that
call the plain functions, the CLI before a flow starts)."""

from __future__ import annotations

import logging

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def run_logger(name: str) -> Logger:
    # Imported here: a read-only command (status, doctor) logs through this without paying
    # for Prefect's import (~1 s).
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)
