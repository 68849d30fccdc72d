"""Files compose's services read their credentials from, rendered from infra/.env.

    .venv/bin/python infra/render_secrets.py   # after editing infra/.env

- `pushgateway/web.yml`: the Pushgateway's --web.config.file. Two users, bcrypt-hashed: the one
  conveyor pushes with (PUSHGATEWAY_USER) and the one Prometheus scrapes with (`prometheus`).
- `prometheus/secrets/pushgateway-password`: the password Prometheus's
  `basic_auth.password_file` reads for its Pushgateway scrapes. (MLflow's metrics come from the
  mlflow-metrics sidecar: Prometheus holds no MLflow credentials.)

Every output is git-ignored. The same functions write the tests' configs, so what the tests
start is what compose starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import bcrypt
import yaml

INFRA = Path(__file__).resolve().parent
SCRAPE_USER = "prometheus"
BCRYPT_ROUNDS = 10  # the Pushgateway checks every request: 10 rounds is ~50 ms, once per scrape


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def pushgateway_web_config(users: dict[str, str]) -> str:
    """--web.config.file for the given users → plain passwords."""
    hashed = {
        user: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
        for user, password in users.items()
    }
    return yaml.safe_dump({"basic_auth_users": hashed})


def write_secret(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def render(env: dict[str, str], out: Path) -> list[Path]:
    missing = [
        name
        for name in (
            "PUSHGATEWAY_USER",
            "PUSHGATEWAY_PASSWORD",
            "PUSHGATEWAY_SCRAPE_PASSWORD",
            "MLFLOW_READER_USER",
            "MLFLOW_READER_PASSWORD",
        )
        if not env.get(name)
    ]
    if missing:
        raise SystemExit(f"set {', '.join(missing)} in infra/.env (see infra/.env.example)")
    users = {
        env["PUSHGATEWAY_USER"]: env["PUSHGATEWAY_PASSWORD"],
        SCRAPE_USER: env["PUSHGATEWAY_SCRAPE_PASSWORD"],
    }
    written = {
        # Read by the containers' own users (nobody, prometheus): readable, in ignored folders.
        out / "pushgateway" / "web.yml": (pushgateway_web_config(users), 0o644),
        out / "prometheus" / "secrets" / "pushgateway-password": (
            env["PUSHGATEWAY_SCRAPE_PASSWORD"],
            0o644,
        ),
    }
    for path, (text, mode) in written.items():
        write_secret(path, text, mode)
    return list(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", type=Path, default=INFRA / ".env")
    parser.add_argument("--out", type=Path, default=INFRA)
    args = parser.parse_args()
    if not args.env.is_file():
        raise SystemExit(f"{args.env} not found: cp infra/.env.example infra/.env and edit it")
    for path in render(read_env(args.env), args.out):
        sys.stdout.write(f"wrote {path}\n")


if __name__ == "__main__":
    main()
