"""`make stack`: conveyor's production topology on 127.0.0.1, from packages, without Docker.

    .venv/bin/python -m infra.stack up [--dir .stack] [--free-ports]   # idempotent
    .venv/bin/python -m infra.stack status [--dir .stack]
    .venv/bin/python -m infra.stack down [--dir .stack]                # leaves no process

What compose runs, one process each, in one state directory: PostgreSQL (its own cluster) with
the Prefect, MLflow and MLflow-auth databases; Redis; an S3 server (moto) with the artifact and
model buckets; MLflow's basic-auth server on Postgres with artifacts on S3; Prefect's server on
Postgres and Redis; a worker per compose worker service; the embedded Triton on the S3 model
repository; the Pushgateway and Prometheus.

Compose is the source of truth: the workers' environment is compose's `x-conveyor-env`, the
Prefect server's is compose's `prefect-server` environment, the databases are compose's plus
`infra/postgres/init.sql`, the workers and their limits are compose's `worker-*` commands.
Only what has to differ on one host differs (`LOCAL`): addresses (`service:port` becomes
127.0.0.1 and a port of the stack), the checkout and state paths, and the Triton backend
(the embedded build has the python backend only). Credentials are generated once per stack
directory into `secrets.env` (mode 0600) under the names `infra/.env` uses.

`up` writes `conveyor.env` (0600): exactly the variables compose gives its workers, as
`export` lines, so that `source .stack/conveyor.env` points `conveyor` and `make deploy` at it.
"""

from infra.stack.compose import (
    ADDRESS,
    ENV_FILE,
    INFRA,
    LOCAL_PATHS,
    LOCAL_VALUES,
    MARKER,
    PORT_OFFSET,
    ROOT,
    SECRETS_FILE,
    STATE_FILE,
    VARIABLE,
    StackError,
    bucket_names,
    compose,
    database_names,
    interpolate,
    prefect_server_environment_template,
    worker_environment_template,
    workers,
)
from infra.stack.data_services import postgres_data, s3_client
from infra.stack.lifecycle import down, status, up
from infra.stack.processes import stop_pid, system_binary
from infra.stack.services import prometheus_config
from infra.stack.state import Stack, env_file_text, other_stacks, read_env_file, write_private

__all__ = [
    "ADDRESS",
    "ENV_FILE",
    "INFRA",
    "LOCAL_PATHS",
    "LOCAL_VALUES",
    "MARKER",
    "PORT_OFFSET",
    "ROOT",
    "SECRETS_FILE",
    "STATE_FILE",
    "VARIABLE",
    "Stack",
    "StackError",
    "bucket_names",
    "compose",
    "database_names",
    "down",
    "env_file_text",
    "interpolate",
    "other_stacks",
    "postgres_data",
    "prefect_server_environment_template",
    "prometheus_config",
    "read_env_file",
    "s3_client",
    "status",
    "stop_pid",
    "system_binary",
    "up",
    "worker_environment_template",
    "workers",
    "write_private",
]
