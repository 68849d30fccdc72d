"""Every estimator family of the table released for every task it learns, through the whole
line on the embedded Triton: `conveyor init`'s spec with the family's search space and fixed
parameters, the search, the gates, MLflow (stored without pickle, its library pinned), ONNX
export with parity, the smoke test, explanations, promotion. Served answers equal the version's
own ONNX file's. Iterates `FAMILIES`: a family added to the table is released here without an
edit. Tables are small and the search short; what is measured is that the line carries each
family, not how well it learns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flows.release import release_flow
from tasks.core.families import FAMILIES, families_for
from tasks.core.model_task import Task
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
from tasks.datasets.data import load_dataset, to_features
from tasks.datasets.schema_gen import init_spec
from tasks.datasets.task_templates import fixed_params, search_space
from tasks.modeling.onnx import predict_outputs
from tasks.registry import model_registry, tracking
from tasks.serving import triton_client, triton_server
from tests.families import quick_params
from tests.integration.test_kinds_release import regression, three_class


def two_class(rows: int = 600, seed: int = 3) -> pd.DataFrame:
    """Credit-like: six applicant measurements, one category, repaid or defaulted."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 6))
    region = rng.choice(["north", "south", "east"], rows)
    logit = x @ np.array([1.2, -0.8, 0.5, 0.0, 0.3, -0.4]) + (region == "south") * 0.7
    label = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "defaulted", "repaid")
    frame = pd.DataFrame(x, columns=[f"m{i}" for i in range(6)])
    return frame.assign(region=region, outcome=label)


TABLES = {
    Task.binary: (two_class, "outcome"),
    Task.multiclass: (three_class, "species"),
    Task.regression: (regression, "progression"),
}
CASES = [(task, family) for task in Task for family in families_for(task)]


@pytest.fixture(scope="module")
def line(prefect_api: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One state directory and one Triton for every family's releases (each its own model)."""
    base = tmp_path_factory.mktemp("families")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("CONVEYOR_HOME", str(base / "state"))
        env.setenv("CONVEYOR_SPEC_DIR", str(base / "specs"))
        try:
            yield base
        finally:
            triton_server.stop(Settings())


def family_spec(base: Path, task: Task, family: str) -> Path:
    """What `conveyor init` writes for the table, with this family, its search space and its
    fixed parameters from the table (few rounds), a one-trial search, explanations on 100 rows and
    a short smoke test."""
    make, target = TABLES[task]
    source = base / f"{task.value}.csv"
    if not source.exists():
        make().to_csv(source, index=False)
    name = f"{family.replace('_', '-')}-{task.value}"
    path = Path(init_spec(str(source), target, name, base / "specs").path)
    raw = yaml.safe_load(path.read_text())
    chosen = raw["estimator"]["family"]
    assert raw["estimator"]["params"] == (yaml.safe_load(fixed_params(task, chosen)) or {})
    raw["estimator"] = {"family": family, "params": quick_params(family, task)}
    # One trial: the search's machinery is the same for every family (test_search covers it).
    raw["search"] |= {"trials": 1, "parallel": 1, "space": yaml.safe_load(search_space(family))}
    raw["explanations"] = {"sample_rows": 100}
    raw["smoke"] |= {"rows": 50, "latency_requests": 20, "load_requests": 50}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(("task", "family"), CASES, ids=lambda c: str(c))
def test_every_family_releases_every_task_it_learns(line: Path, task: Task, family: str) -> None:
    path = family_spec(line, task, family)
    spec = load_spec(path)
    result = release_flow(str(path))
    settings = Settings()
    assert result.version == 1
    assert model_registry.alias_version(settings, spec.name, model_registry.CHAMPION) == 1
    assert result.export.onnx.parity.passed
    # Stored as a release stores it (skops, the family's types trusted) and loaded back.
    model = tracking.load_model(settings, f"models:/{spec.name}/1")
    requirements = tracking.read_artifact(
        settings, f"runs:/{result.run_id}/model/requirements.txt"
    ).decode()
    for distribution in FAMILIES[family].requirements:
        assert f"{distribution}==" in requirements
    # The champion answers as its own ONNX file does, and as the stored model does.
    onnx_bytes = tracking.read_artifact(settings, f"runs:/{result.run_id}/{tracking.ONNX_ARTIFACT}")
    rows = to_features(load_dataset(result.holdout.uri), spec)[:32]
    offline = predict_outputs(onnx_bytes, rows)
    endpoint = triton_server.endpoint(settings)
    served = triton_client.outputs_http(triton_client.http_client(endpoint), spec.name, rows)
    for output, values in offline.items():
        np.testing.assert_allclose(served[output], values, rtol=0, atol=1e-5)
    if task is Task.regression:
        np.testing.assert_allclose(
            served["prediction"].reshape(-1), model.predict(rows), rtol=1e-4, atol=1e-3
        )
    else:
        np.testing.assert_allclose(served["probabilities"], model.predict_proba(rows), atol=1e-4)
    card = tracking.read_artifact(settings, result.model_card).decode()
    assert FAMILIES[family].explanation in card
