"""The stack's stores, started first: PostgreSQL (its own cluster, with compose's databases),
Redis and the S3 server (moto) with compose's buckets."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from infra.stack.compose import BIN, HOST, S3_SERVICE, StackError, bucket_names, database_names
from infra.stack.processes import http_ok, port_open, spawn, system_binary, wait_until
from infra.stack.state import Stack, write_private


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI (and `make` under sudo) is root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def postgres_url(stack: Stack, database: str) -> str:
    v = stack.variables
    return (
        f"postgresql://{v['POSTGRES_USER']}:{v['POSTGRES_PASSWORD']}@"
        f"{stack.address('postgres', 5432)}/{database}"
    )


# Where PostgreSQL's data goes when root runs the stack from a directory the postgres user
# cannot traverse (a clone under /root, mode 0700): under the postgres user's own home, one
# folder per stack directory. `make stack-down` deletes it with the rest of the stack's data.
POSTGRES_ELSEWHERE = Path("/var/lib/postgresql/conveyor-stacks")


def postgres_data(stack: Stack) -> Path:
    """PostgreSQL's data directory: in the stack directory, unless the server (run as the
    postgres user when root starts it) could not reach it there."""
    inside = stack.root / "postgres"
    if os.geteuid() != 0:
        return inside
    reach = subprocess.run(_as_postgres(["test", "-x", str(stack.root)]), check=False)
    if reach.returncode == 0:
        return inside
    digest = hashlib.sha256(str(stack.root).encode()).hexdigest()[:16]
    return POSTGRES_ELSEWHERE / digest


def _postgres_owned(path: Path, directory: bool) -> None:
    if directory:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        path.touch(mode=0o600)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def start_postgres(stack: Stack) -> str:
    data = postgres_data(stack)
    pg_ctl = system_binary("pg_ctl", "postgresql")
    env = stack.process_environment()
    if not (data / "PG_VERSION").is_file():
        _postgres_owned(data, directory=True)
        # initdb wants an empty data directory, and must read this as the postgres user.
        password_file = data.parent / f"{data.name}.initdb.pw"
        write_private(password_file, stack.variables["POSTGRES_PASSWORD"] + "\n")
        if os.geteuid() == 0:
            shutil.chown(password_file, "postgres", "postgres")
        initdb = system_binary("initdb", "postgresql")
        done = subprocess.run(
            _as_postgres(
                [initdb, "-D", str(data), "-U", stack.variables["POSTGRES_USER"],
                 f"--pwfile={password_file}", "--auth=scram-sha-256", "--encoding=UTF8"]
            ),
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        password_file.unlink()
        if done.returncode != 0:
            raise StackError(f"initdb failed: {done.stdout}{done.stderr}")
    # pg_ctl opens the log as the postgres user: beside the data when that is elsewhere.
    log = stack.log("postgres") if data.is_relative_to(stack.root) else data.with_suffix(".log")
    _postgres_owned(log, directory=False)
    options = f"-h {HOST} -p {stack.port('postgres', 5432)} -k {data}"
    done = subprocess.run(
        _as_postgres([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise StackError(f"PostgreSQL did not start ({done.stderr.strip()}); see {log}")
    stack.pids["postgres"] = int((data / "postmaster.pid").read_text().split()[0])
    stack.save()
    create_databases(stack)
    where = "" if data.is_relative_to(stack.root) else f"; data in {data}"
    return f"postgresql://{stack.address('postgres', 5432)} ({', '.join(database_names())}{where})"


def create_databases(stack: Stack) -> None:
    import psycopg2

    connection = psycopg2.connect(postgres_url(stack, "postgres"))
    connection.autocommit = True
    # Not `with connection`: that opens a transaction, and CREATE DATABASE refuses to run in one.
    with connection.cursor() as cursor:
        cursor.execute("SELECT datname FROM pg_database")
        existing = {row[0] for row in cursor.fetchall()}
        for name in database_names():
            if name not in existing:
                cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()


def start_redis(stack: Stack) -> str:
    directory = stack.root / "redis"
    directory.mkdir(exist_ok=True)
    config = directory / "redis.conf"
    # The password in a 0600 file, not on the command line where `ps` shows it.
    write_private(
        config,
        f"bind {HOST}\nport {stack.port('redis', 6379)}\ndir {directory}\n"
        f"requirepass {stack.variables['REDIS_PASSWORD']}\nappendonly yes\nprotected-mode yes\n",
    )
    command = [system_binary("redis-server", "redis-server"), str(config)]
    spawn(stack, "redis", command, stack.process_environment(), directory)
    wait_until(stack, "redis", port_open(stack.port("redis", 6379)), 30)
    return f"redis://{stack.address('redis', 6379)}"


def s3_env(stack: Stack) -> dict[str, str]:
    worker = stack.worker_environment()
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    return {key: worker[key] for key in keys}


def s3_client(env: dict[str, str]) -> Any:
    """A boto3 S3 client for the AWS_* variables in `env` (the workers' credentials)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def start_s3(stack: Stack) -> str:
    port = stack.port(S3_SERVICE, 9000)
    command = [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)]
    spawn(stack, "s3", command, stack.process_environment(), stack.root)
    wait_until(stack, "s3", http_ok(f"http://{HOST}:{port}/moto-api/"), 60)
    client = s3_client(s3_env(stack))
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    buckets = bucket_names(stack.variables)
    for bucket in buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    return f"s3 http://{HOST}:{port} (buckets {', '.join(buckets)})"
