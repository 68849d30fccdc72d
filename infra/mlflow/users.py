"""Create MLflow's basic-auth users for conveyor, once: the worker (writes) and a reader.

Runs against a `mlflow server --app-name basic-auth` as its admin, with the standard library
only, so the same file serves compose's one-shot job (inside the MLflow image) and the tests:

    MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_ADMIN_USER=admin MLFLOW_ADMIN_PASSWORD=... \\
    MLFLOW_WORKER_USER=conveyor-worker MLFLOW_WORKER_PASSWORD=... \\
    MLFLOW_READER_USER=conveyor-reader MLFLOW_READER_PASSWORD=... python users.py

Permissions: the server's default_permission is READ, so every user can browse and none can
write what it did not create. The worker creates each model's experiment and registered model,
which makes it their MANAGE owner: it needs no grant, and the reader cannot move an alias.
Idempotent: an existing user keeps its password (rotate with MLflow's update-password API).
"""

from __future__ import annotations

import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def _request(uri: str, path: str, auth: tuple[str, str], body: dict[str, str] | None) -> int:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{uri.rstrip('/')}{path}",
        data=data,
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def ensure_user(uri: str, admin: tuple[str, str], user: str, password: str) -> str:
    query = urllib.parse.urlencode({"username": user})
    status = _request(uri, f"/api/2.0/mlflow/users/get?{query}", admin, None)
    if status == 200:
        return "exists"
    if status in {401, 403}:
        raise SystemExit(f"MLflow at {uri} refused the admin credentials ({status})")
    body = {"username": user, "password": password}
    status = _request(uri, "/api/2.0/mlflow/users/create", admin, body)
    if status != 200:
        raise SystemExit(f"MLflow at {uri} could not create user {user!r} ({status})")
    return "created"


def main() -> None:
    env = os.environ
    uri = env["MLFLOW_TRACKING_URI"]
    admin = (env["MLFLOW_ADMIN_USER"], env["MLFLOW_ADMIN_PASSWORD"])
    for role in ("WORKER", "READER"):
        user = env[f"MLFLOW_{role}_USER"]
        outcome = ensure_user(uri, admin, user, env[f"MLFLOW_{role}_PASSWORD"])
        sys.stdout.write(f"MLflow user {user}: {outcome}\n")


if __name__ == "__main__":
    main()
