"""What a person reads, checked without a browser: the run forms `make deploy` writes, the fleet
status and alias history as tables that fit, a model's own nouns in its card, links into the
MLflow UI. The browser test (tests/integration/test_ui.py) checks the same pages rendered."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.deploy_forms import described, form, one_line
from tasks.core.settings import Settings
from tasks.core.spec import SpecError, load_spec
from tasks.ops import fleet, model_card
from tasks.registry import alias_history, known_specs, ui_links
from tests.conftest import ROOT
from tests.unit.test_evaluation_training import SAMPLE

SPECS = ROOT / "deployments/models"


@pytest.fixture
def shipped(settings: Settings) -> list[tuple[Path, object]]:
    return fleet.load_fleet(settings)


def release_schema() -> dict[str, object]:
    """The schema Prefect derives from `release_flow`'s signature (what `prefect deploy` sends)."""
    from prefect.utilities.callables import parameter_schema

    from flows.release import release_flow

    return parameter_schema(release_flow.fn).model_dump_for_openapi()


def test_the_form_offers_the_fleet_by_name_first_and_a_path_second(shipped: list) -> None:
    schema, names_model = form(release_schema(), shipped)
    assert names_model
    spec_path = schema["properties"]["spec_path"]
    choice, other = spec_path["anyOf"]
    assert choice == {
        "title": "a model of the fleet",
        "type": "string",  # the UI opens the first tab whose type matches the value
        "enum": [spec.name for _, spec in shipped],
    }
    assert other == {"title": "another spec file", "type": "string"}
    # Prefect's default is the fraud spec's path: shown as the model's name.
    assert spec_path["default"] == "fraud-detector" and spec_path["title"] == "model"
    # One line per model, blank lines between (the UI's markdown joins single-spaced items).
    for _, spec in shipped:
        assert f"\n\n- **{spec.name}**: {one_line(spec)}" in spec_path["description"]


def test_an_optional_parameter_is_a_plain_field_with_words_for_a_title(shipped: list) -> None:
    schema, _ = form(release_schema(), shipped)
    resume = schema["properties"]["resume_from"]
    assert "anyOf" not in resume and resume["type"] == "string" and "default" not in resume
    assert resume["title"] == "resume from"
    assert schema["properties"]["force"]["title"] == "force"
    assert schema["properties"]["force"]["default"] is False


def test_a_required_model_gets_no_default(shipped: list) -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.explain import explain_flow

    raw = parameter_schema(explain_flow.fn).model_dump_for_openapi()
    schema, names_model = form(raw, shipped)
    assert names_model and "model" in schema["required"]
    assert "default" not in schema["properties"]["model"]
    assert schema["properties"]["model"]["anyOf"][1]["title"] == "another model"
    assert schema["properties"]["version"]["type"] == "integer"  # was `int | None`


def test_a_form_without_a_model_is_left_its_types(shipped: list) -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.drift import fleet_drift_flow

    raw = parameter_schema(fleet_drift_flow.fn).model_dump_for_openapi()
    schema, names_model = form(raw, shipped)
    assert not names_model
    assert schema["properties"]["spec_dir"]["type"] == "string"
    assert schema["properties"]["max_concurrent"]["type"] == "integer"


def test_one_line_is_the_first_sentence_cut_on_a_word(shipped: list) -> None:
    by_name = {spec.name: spec for _, spec in shipped}
    assert one_line(by_name["fraud-detector"]) == (
        "Scores card transactions for fraud at authorisation time."
    )
    long = one_line(by_name["loss-given-default"])
    assert long.endswith("…") and len(long) <= 141
    assert long[:-1] in " ".join(by_name["loss-given-default"].description.split())


def test_the_deployment_description_keeps_its_own_words_and_lists_every_model(
    shipped: list,
) -> None:
    once = described("Train, validate and promote one model.", shipped)
    again = described(once, shipped)  # `make deploy` twice
    assert again == once and once.startswith("Train, validate and promote one model.")
    for path, spec in shipped:
        assert f"- **{spec.name}** (`{path.name}`, {spec.task.value}):" in once


def test_a_fleet_name_resolves_to_its_spec_file(settings: Settings, tmp_path: Path) -> None:
    # Relative to the checkout, as the workers and `make` run (settings.spec_dir's default).
    assert known_specs.spec_file(settings, "churn") == "deployments/models/churn.yaml"
    path = str(SPECS / "churn.yaml")
    assert known_specs.spec_file(settings, path) == path  # a file stays itself
    with pytest.raises(SpecError, match=r"no model named 'churnn' in deployments/models/ .*churn,"):
        known_specs.spec_file(settings, "churnn")
    # A broken spec beside the others does not stop the lookup of a good one.
    broken = tmp_path / "fleet"
    broken.mkdir()
    (broken / "a-broken.yaml").write_text("name: [")
    (broken / "churn.yaml").write_text((SPECS / "churn.yaml").read_text())
    moved = settings.model_copy(update={"spec_dir": broken})
    assert known_specs.spec_file(moved, "churn") == str(broken / "churn.yaml")


def test_the_fleet_status_table_has_short_cells_and_the_long_fields_below() -> None:
    at = datetime(2026, 12, 6, 4, 14, tzinfo=UTC)
    long_why = "release passed every gate after a challenger beat the champion " * 2
    status = fleet.ModelStatus(
        model="credit-default",
        task="binary",
        champion=fleet.AliasState(version=12, since=at, by="a.reviewer", why=long_why),
        previous=fleet.AliasState(version=11),
        served=[11, 12],
        last_release="v12 promoted",
        last_release_at=at,
        drift_share=0.125,
        drift_at=at,
        problems=["Triton serves v10, which is neither champion nor previous | repair"],
    )
    text = fleet.markdown([status])
    table = [line for line in text.splitlines() if line.startswith("|")]
    cells = [c.strip() for line in table for c in line.strip("|").split("|")]
    assert max(map(len, cells)) <= 20, cells  # 7 columns of ≤ 20 characters fit 1400 px
    assert "| **credit-default** | binary | v12 | v11 | 11, 12 | 0.12 |" in text
    assert "champion v12 2026-12-06 04:14 by a.reviewer" in text  # when, in the details
    assert "| 0.12 | 1 |" in text
    details = text.split("\n\n", 1)[1]
    assert long_why.strip() in details and "neither champion nor previous | repair" in details


def test_the_status_command_fits_80_columns_without_breaking_a_word() -> None:
    """`conveyor status` at 80 columns broke "champion" into "champio/n" (#42)."""
    from io import StringIO

    from rich.console import Console

    from cli.operate import fleet_table

    kinds = (("loss-given-default", "regression"), ("merchant-category", "multiclass"))
    statuses = [
        fleet.ModelStatus(
            model=name, task=task, champion=fleet.AliasState(version=3), served=[3], problems=["x"]
        )
        for name, task in kinds
    ]
    out = StringIO()
    Console(file=out, width=80).print(fleet_table(statuses, "2 models, deployments/models/"))
    text = out.getvalue()
    assert max(map(len, text.splitlines())) <= 80
    for word in ("loss-given-default", "merchant-category", "regression", "multiclass", "problems"):
        assert word in text
    assert "…" not in text


def test_the_alias_history_is_a_list_newest_first_in_plain_words() -> None:
    """MLflow's UI draws markdown tables without borders or padding (#42): a list reads."""
    at = datetime(2026, 12, 6, 4, 14, tzinfo=UTC)
    moves = [
        alias_history.AliasMove(
            alias="champion", from_version=None, to_version=1, at=at, actor="ci", reason="first"
        ),
        alias_history.AliasMove(
            alias="champion", from_version=1, to_version=2, at=at, actor="ci", reason="a | b\nc"
        ),
        alias_history.AliasMove(
            alias="challenger", from_version=3, to_version=None, at=at, actor="doctor", reason="x"
        ),
    ]
    lines = alias_history.history_lines("churn", moves)
    assert lines[0].startswith(alias_history.DESCRIPTION_HEADING)
    assert "`conveyor history churn`" in lines[0]
    assert lines[2:] == [
        "- **2026-12-06 04:14 UTC** · `challenger` removed (was v3) · doctor · x",
        "- **2026-12-06 04:14 UTC** · `champion` → v2 (was v1) · ci · a | b c",
        "- **2026-12-06 04:14 UTC** · `champion` → v1 (was none) · ci · first",
    ]


def test_the_alias_history_is_the_registered_models_description(settings: Settings) -> None:
    from tasks.registry import mlflow_store

    client = mlflow_store.client(settings)
    client.create_registered_model("readable", description="Written by a person.")
    at = datetime.now(UTC)
    for version in (1, 2):
        move = alias_history.AliasMove(
            alias="champion",
            from_version=version - 1 or None,
            to_version=version,
            at=at.replace(microsecond=version),
            actor="ci",
            reason=f"release {version}",
        )
        alias_history.record(settings, "readable", move)
    model = client.get_registered_model("readable")
    own, listed = model.description.split(alias_history.DESCRIPTION_HEADING)
    assert own.strip() == "Written by a person."  # kept, and the list written once
    items = [line for line in listed.splitlines() if line.startswith("- ")]
    assert [i.split("→ ")[1].split()[0] for i in items] == ["v2", "v1"]
    # The record is MLflow-hidden tags: the model's page lists no JSON (#42).
    visible = [k for k in model.tags if not k.startswith("mlflow.")]
    assert visible == [], visible


def test_a_history_an_older_conveyor_wrote_is_moved_out_of_sight(settings: Settings) -> None:
    """Moves recorded as visible `conveyor.history.*` tags, under an older description table:
    the next move keeps them all, hides their tags and rewrites the description once."""
    from tasks.registry import mlflow_store

    client = mlflow_store.client(settings)
    old = alias_history.LEGACY_HEADINGS[0]
    client.create_registered_model("older", description=f"Mine.\n\n{old}\n\n| a | table |")
    at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    first = alias_history.AliasMove(
        alias="champion", from_version=None, to_version=1, at=at, actor="ci", reason="one"
    )
    key = f"{alias_history.LEGACY_PREFIX}{at:%Y%m%dT%H%M%S.%fZ}.champion"
    client.set_registered_model_tag("older", key, first.model_dump_json())
    second = first.model_copy(update={"from_version": 1, "to_version": 2, "at": datetime.now(UTC)})
    alias_history.record(settings, "older", second)
    model = client.get_registered_model("older")
    assert [k for k in model.tags if not k.startswith("mlflow.")] == []
    assert alias_history.moves(settings, "older") == [first, second]
    assert old not in model.description and "| a | table |" not in model.description
    assert model.description.startswith("Mine.\n\n" + alias_history.DESCRIPTION_HEADING)


def test_links_open_mlflow_in_its_machine_learning_mode(settings: Settings) -> None:
    url = ui_links.model_version_url(settings, "churn", 3)
    assert url == f"{settings.mlflow_ui_url}/#/models/churn/versions/3{ui_links.MODE}"
    assert ui_links.run_url(settings, "abc").endswith(f"/#/runs/abc{ui_links.MODE}")
    assert ui_links.artifact_url(settings, "s3://bucket/key") is None
    assert ui_links.link("text", None, "ref") == "text (`ref`)"


@pytest.mark.parametrize(
    ("name", "noun", "absent"),
    [
        ("churn", "A customer is predicted `churned = 1`", "transaction"),
        ("fraud-detector", "A card transaction is predicted `is_fraud = 1`", "customer"),
        ("credit-default", "A loan application is predicted", "transaction"),
    ],
)
def test_the_card_says_what_the_answer_means_in_the_models_nouns(
    name: str, noun: str, absent: str
) -> None:
    spec = load_spec(SPECS / f"{name}.yaml")
    metrics = SAMPLE.model_copy(update={"threshold": 0.698})
    sentence = model_card.answer_sentence(spec, metrics)
    assert sentence.startswith(noun) and absent not in sentence.lower()
    assert "**0.6980**" in sentence


def test_the_subject_reads_in_the_plural() -> None:
    spec = load_spec(SPECS / "churn.yaml")
    for one, many in [
        ("customer", "customers"),
        ("loan application", "loan applications"),
        ("defaulted loan", "defaulted loans"),
        ("company", "companies"),
        ("business", "businesses"),
        ("row", "rows"),
    ]:
        assert spec.model_copy(update={"subject": one}).subjects == many


def test_a_local_data_source_is_named_not_located() -> None:
    spec = load_spec(SPECS / "churn.yaml")
    local = spec.model_copy(
        update={"data": spec.data.model_copy(update={"source": "/srv/data/churn/2026-12.parquet"})}
    )
    assert model_card._source(local) == "`2026-12.parquet` (a file or folder on the worker)"
    assert re.search("/srv", model_card._source(local)) is None
    assert model_card._source(spec).startswith("`synthetic:churn`")


def test_a_table_mlflow_refuses_to_rewrite_never_fails_the_move(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The description is a view: MLflow refusing its update leaves the move recorded (the tag)
    and the move's caller (a promotion) going on."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.registry import mlflow_store

    client = mlflow_store.client(settings)
    client.create_registered_model("refused", description="Written by a person.")

    def refuse(*args: object, **kwargs: object) -> None:
        raise MlflowException("update refused")

    monkeypatch.setattr(MlflowClient, "update_registered_model", refuse)
    move = alias_history.AliasMove(
        alias="champion",
        from_version=None,
        to_version=1,
        at=datetime.now(UTC),
        actor="ci",
        reason="first",
    )
    alias_history.record(settings, "refused", move)
    assert alias_history.moves(settings, "refused", archived=False) == [move]
    assert client.get_registered_model("refused").description == "Written by a person."


def test_a_link_needs_no_mlflow_read_when_the_experiment_is_known(settings: Settings) -> None:
    """The release artifact is written after the promotion: its links carry the experiment,
    and a run MLflow cannot find is linked by its own page, never an error."""
    dead = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9/"})
    url = ui_links.artifact_url(dead, "runs:/abc/model_card.md", experiment_id="7")
    assert url == f"{dead.mlflow_ui_url}/#/experiments/7/runs/abc/artifacts/model_card.md" + (
        ui_links.MODE
    )
    assert ui_links.artifact_url(settings, "runs:/0123abcd/model_card.md") == ui_links.run_url(
        settings, "0123abcd"
    )


def test_the_readme_names_candidates_and_refused_nan_as_they_are() -> None:
    """README said NaN got a 400 in one place and a 500 in another, and named candidates
    `<name>-candidate` (#42). The reference now lives in docs/: read together."""
    from tasks.core.names import candidate_name

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(p.read_text() for p in pages)
    assert not re.search(r"(?<!orphan)-candidate", text)  # `orphan-candidate` is a doctor kind
    assert candidate_name("fraud-detector", 2) in text
    flat = " ".join(text.split())
    assert "NaN in any other feature is refused (HTTP 500 `INTERNAL`" in flat
    assert "with a 400" not in flat


def test_served_by_names_the_edge_and_every_replica(tmp_path: Path) -> None:
    """A release through the edge was said to be "served by" its first replica alone (#42):
    callers reach the edge, which balances over every replica."""
    from flows.export import ExportResult
    from flows.release import ReleaseResult
    from tasks.serving.rollout import ServingState
    from tasks.serving.triton_ports import Endpoint

    first, second = Endpoint(http="127.0.0.1:8000", grpc="127.0.0.1:8001"), "replica 2 (h:8010)"
    serving = ServingState(
        endpoint=first, model="m", versions=[3], replicas=["replica 1 (h:8000)", second]
    )
    result = ReleaseResult.model_construct(export=ExportResult.model_construct(serving=serving))
    edge = Settings(home=tmp_path, edge_http_url="h:8443", edge_ca_file=tmp_path / "ca.crt")
    assert result.served_by(edge) == (
        "the edge https://h:8443 → replica 1 (h:8000), replica 2 (h:8010)"
    )
    assert result.served_by(Settings(home=tmp_path)) == "replica 1 (h:8000), replica 2 (h:8010)"
    alone = serving.model_copy(update={"replicas": ["triton 127.0.0.1:8000"]})
    result = ReleaseResult.model_construct(export=ExportResult.model_construct(serving=alone))
    assert result.served_by(Settings(home=tmp_path)) == (
        "Triton http://127.0.0.1:8000, gRPC 127.0.0.1:8001"
    )
