"""`conveyor doctor`'s checks as one table, in the order they are examined and repaired: the
servers first (a model's serving is judged once its server is back), then what callers get,
then a dead release's leftovers (serving is put back before any file it may serve is deleted).
A new check is one module (`CHECK = DoctorCheck(...)`, `tasks.ops.doctor.check`) plus one line."""

from __future__ import annotations

from tasks.ops.doctor import edge, leftover_checks, server_checks, serving_checks
from tasks.ops.doctor.check import DoctorCheck

CHECKS: list[DoctorCheck] = [
    server_checks.EMBEDDED,
    server_checks.REPLICAS,
    edge.CHECK,
    serving_checks.ALIAS_FILES,
    serving_checks.SERVING,
    serving_checks.RELEASE_RUNNING,
    leftover_checks.CHALLENGER,
    leftover_checks.CANDIDATES,
    leftover_checks.VERSIONS,
    leftover_checks.RUNS,
    leftover_checks.ROUTE,
    leftover_checks.STAGED,
]
