"""What a Dask worker runs to die: kept in a module of their own, importing nothing of
conveyor's, so each worker that Dask starts again in their place is up in a second (a worker
imports the module of the function it runs)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def dies_once(marker: str, _shared: int) -> int:
    """Kills its worker process the first time it runs: Dask must run it again elsewhere."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(1)
    return os.getpid()


def dies_always(piece: object, _shared: int) -> int:
    """Kills every worker it runs on, as a crashing library does."""
    os._exit(1)


def fills_memory(piece: object, _shared: int) -> int:
    """Holds more than its worker's memory limit, as a piece too large to read does."""
    held = np.ones(200_000_000)  # 1.6 GB
    time.sleep(20)  # the nanny looks every 100 ms
    return int(held[-1])
