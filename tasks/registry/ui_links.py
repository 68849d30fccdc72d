"""Where a person clicks: the MLflow UI's pages for what conveyor's artifacts and reports name (a
run, a run's artifact, a model version), under `Settings.mlflow_ui_url` (the tracking server's
public address in compose and `make stack`, `make ui`'s MLflow UI by default).

Markdown links carry the raw reference beside them: a `runs:/` URI is what `conveyor` commands
and MLflow's API take, the link is what a reader follows."""

from __future__ import annotations

from urllib.parse import quote

from mlflow.exceptions import MlflowException

from tasks.core.settings import Settings
from tasks.registry.mlflow_store import client

RUNS_URI = "runs:/"
# MLflow 3's UI opens pages in its GenAI mode (traces, token cost) unless the page's address
# says otherwise; the experiment's kind tag (`tracking.EXPERIMENT_KIND`) only counts where the
# mode switch is off. Every link conveyor writes asks for the machine-learning mode.
MODE = "?workflowType=machine_learning"


def _base(settings: Settings) -> str:
    return settings.mlflow_ui_url.rstrip("/") + "/#"


def run_url(settings: Settings, run_id: str, experiment_id: str | None = None) -> str:
    """A run's page; without its experiment, the UI's direct route finds it."""
    if experiment_id is None:
        return f"{_base(settings)}/runs/{run_id}{MODE}"
    return f"{_base(settings)}/experiments/{experiment_id}/runs/{run_id}{MODE}"


def model_version_url(settings: Settings, name: str, version: int) -> str:
    return f"{_base(settings)}/models/{quote(name)}/versions/{version}{MODE}"


def artifact_url(settings: Settings, uri: str, experiment_id: str | None = None) -> str | None:
    """The run's artifact page for a `runs:/<run>/<path>` URI; None for any other URI. The UI
    has no direct route to an artifact, so without `experiment_id` the run is read for it; if
    MLflow does not answer, the run's page (its direct route) stands in: a link never fails
    what it describes."""
    if not uri.startswith(RUNS_URI):
        return None
    run_id, _, path = uri.removeprefix(RUNS_URI).partition("/")
    if experiment_id is None:
        try:
            experiment_id = client(settings).get_run(run_id).info.experiment_id
        except MlflowException:
            return run_url(settings, run_id)
    page = f"{_base(settings)}/experiments/{experiment_id}/runs/{run_id}/artifacts"
    return f"{page}/{path}{MODE}" if path else f"{page}{MODE}"


def link(text: str, url: str | None, reference: str = "") -> str:
    """`[text](url)`, with the raw reference beside it in code; plain text without a URL."""
    shown = f"[{text}]({url})" if url else text
    return f"{shown} (`{reference}`)" if reference else shown


def artifact_link(settings: Settings, text: str, uri: str, experiment_id: str | None = None) -> str:
    return link(text, artifact_url(settings, uri, experiment_id), uri)
