"""What `make stack` says last: where each UI is, whom to log in as, which line of the secrets
file holds the password (never the password: a console is scrollback, CI logs and screen
shares), and what to run next."""

from __future__ import annotations

from infra.stack.compose import ENV_FILE, ROOT, SECRETS_FILE
from infra.stack.dask_cluster import dashboard
from infra.stack.state import Stack


def handover(stack: Stack) -> list[str]:
    secrets = stack.root / SECRETS_FILE
    user = stack.variables
    prefect_user = user["PREFECT_AUTH_STRING"].split(":", 1)[0]
    uis = [
        (
            "Prefect UI",
            stack.url("prefect-server", 4200),
            f"paste the whole value of PREFECT_AUTH_STRING ({prefect_user}:…) into its login box",
        ),
        (
            "MLflow UI",
            stack.url("mlflow", 5000),
            f"user {user['MLFLOW_ADMIN_USER']}, password MLFLOW_ADMIN_PASSWORD (read-only: "
            f"{user['MLFLOW_READER_USER']}, MLFLOW_READER_PASSWORD); pick 'Model training' at "
            "its top left (it opens in GenAI mode; conveyor's links ask for training)",
        ),
        (
            "Edge (models)",
            f"https://{stack.address('edge', 8443)}",
            f"Authorization: Bearer <EDGE_DEMO_KEY>; CA {stack.root / 'edge' / 'edge-ca.crt'}; "
            f"gRPC on {stack.address('edge', 8444)}",
        ),
        ("Dask", dashboard(stack), "the cluster's dashboard; no login (loopback only)"),
        ("Prometheus", stack.url("prometheus", 9090), "no login (loopback only)"),
        (
            "Pushgateway",
            stack.url("pushgateway", 9091),
            f"user {user['PUSHGATEWAY_USER']}, password PUSHGATEWAY_PASSWORD",
        ),
    ]
    elsewhere = "" if stack.root == (ROOT / ".stack").resolve() else f" STACK_DIR={stack.root}"
    return [
        "",
        f"Credentials: {secrets} (mode 0600); each login below names its line there.",
        *(f"  {name:<12} {url:<24} {login}" for name, url, login in uis),
        "",
        "Next:",
        f"  source {stack.root / ENV_FILE}   # this shell now talks to the stack",
        "  make deploy                       # work pools, deployments and their run forms",
        "  then in the Prefect UI: Deployments > release > Run > Custom run, pick a model by name",
        "  or: .venv/bin/prefect deployment run release/release --param spec_path=churn",
        f"  make stack-down{elsewhere}   # stops every process, deletes the data (keeps logs)",
    ]
