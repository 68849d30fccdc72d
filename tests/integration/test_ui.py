"""What a person sees, in a real browser, on the production topology after `make deploy`:
headless Chromium (Debian's `chromium`, driven by Playwright; no browser is downloaded) logs in
to the Prefect UI, releases churn from the release form by picking it by name, reads the run's
artifacts and the nightly fleet status at a laptop's width, and opens the model's page and its
experiment in the MLflow UI. Every step leaves a screenshot in test-artifacts/ui/ for a person to
look at; the assertions are on what the pages render.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml
from playwright.sync_api import Browser, Page, sync_playwright

from infra.deploy_forms import one_line
from tasks.core.settings import Settings
from tasks.core.spec import load_spec
from tasks.registry import mlflow_store, model_registry, tracking, ui_links
from tests.conftest import ROOT, SMALL_CANARY
from tests.servers import ProductionStack

SHOTS = ROOT / "test-artifacts" / "ui"
WIDTH, HEIGHT = 1400, 900  # a laptop's browser window
MODEL = "churn"  # released from the form: the shipped spec, under its own name on the stack
SHIPPED = sorted(load_spec(p).name for p in (ROOT / "deployments/models").glob("*.yaml"))
# A machine path in what a reviewer reads: the checkout, a temporary or a home directory.
MACHINE_PATH = re.compile(rf"({re.escape(str(ROOT))}|/tmp/|/home/|/root/|/var/)")


def shot(page: Page, name: str) -> None:
    """The page at the laptop's width and as tall as its content (the Prefect UI scrolls inside
    its own pane, where a full-page screenshot stops at the window)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Page transitions fade in: a screenshot mid-way is grey (spinners loop forever: not those).
    page.wait_for_function(
        "document.getAnimations().every(a => a.playState !== 'running'"
        " || a.effect.getTiming().iterations === Infinity)"
    )
    tall = page.evaluate(
        "Math.max(...[...document.querySelectorAll('main, div')].map(e => e.scrollHeight))"
    )
    page.set_viewport_size({"width": WIDTH, "height": min(max(HEIGHT, int(tall)), 5000)})
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})


def wider_than_the_pane(page: Page) -> list[str]:
    """Every rendered table (and the block that holds it) that needs sideways scrolling."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('table')].flatMap(t => {
            const box = t.closest('.p-table, .markdown-renderer, article, main') || t.parentElement;
            const wide = t.scrollWidth > t.clientWidth + 1 || box.scrollWidth > box.clientWidth + 1
                || t.getBoundingClientRect().right > window.innerWidth;
            return wide ? [t.innerText.slice(0, 80)] : [];
        })"""
    )
    return found


@dataclass
class Ui:
    production: ProductionStack
    browser: Browser
    prefect: Page
    settings: Settings

    @property
    def url(self) -> str:
        return self.production.api.removesuffix("/api")

    def post(self, path: str, body: dict[str, object]) -> list[dict[str, object]]:
        response = httpx.post(
            f"{self.production.api}{path}", json=body, auth=self.production.auth, timeout=10
        )
        response.raise_for_status()
        found: list[dict[str, object]] = response.json()
        return found

    def wait(self, run_id: str, timeout_s: float = 420) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = httpx.get(
                f"{self.production.api}/flow_runs/{run_id}", auth=self.production.auth, timeout=10
            ).json()
            if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                return str(run["state"]["type"])
            time.sleep(2)
        raise AssertionError(f"flow run {run_id} did not finish in {timeout_s:.0f} s")

    def artifact(self, key: str, flow_run_id: str | None = None) -> str:
        """The newest artifact with this key (of this flow run); its id."""
        body: dict[str, object] = {
            "artifacts": {"key": {"any_": [key]}},
            "sort": "CREATED_DESC",
            "limit": 1,
        }
        if flow_run_id:
            body["flow_runs"] = {"id": {"any_": [flow_run_id]}}
        [found] = self.post("/artifacts/filter", body)
        return str(found["id"])

    def open_artifact(self, artifact_id: str, name: str) -> str:
        self.prefect.goto(f"{self.url}/artifacts/artifact/{artifact_id}")
        self.prefect.locator(".markdown-renderer, table").first.wait_for(timeout=20_000)
        shot(self.prefect, name)
        return self.prefect.locator("body").inner_text()


@pytest.fixture(scope="module")
def ui(deployed: ProductionStack) -> Iterator[Ui]:
    chromium = shutil.which("chromium")
    assert chromium, "the browser tests need Debian's chromium: `make test` installs it as root"
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.set_default_timeout(30_000)
        with pytest.MonkeyPatch.context() as env:
            # This process reads the registry as the workers do.
            for key, value in deployed.env.items():
                env.setenv(key, value)
            yield Ui(deployed, browser, page, Settings())
        browser.close()


@pytest.fixture(scope="module")
def form(ui: Ui) -> Page:
    """Log in and open the release form as a person does."""
    page = ui.prefect
    page.goto(ui.url)
    shot(page, "01-login")
    page.get_by_placeholder("admin:pass").fill(ui.production.env["PREFECT_API_AUTH_STRING"])
    page.get_by_role("button", name="Login").click()
    page.wait_for_url(re.compile(r".*/dashboard"))
    page.goto(f"{ui.url}/deployments")
    page.get_by_role("link", name="release", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()
    page.get_by_role("button", name="a model of the fleet").wait_for()
    shot(page, "02-release-form")
    return page


def open_choice(page: Page) -> None:
    # The select opens from the keyboard (a synthetic click only focuses it).
    page.locator(".p-select-button__control").first.focus()
    page.keyboard.press(" ")
    page.locator(".p-select-option").first.wait_for()


def test_the_release_form_offers_the_models_by_name(form: Page) -> None:
    page = form
    text = page.locator("body").inner_text()
    assert 'Property is type "None"' not in text and "resume from" in text
    # The fleet's tab first and chosen, on a model's name; each name with its description.
    tabs = page.locator(".p-button-group").first.get_by_role("button")
    assert tabs.all_inner_texts() == ["a model of the fleet", "another spec file"]
    assert tabs.first.get_attribute("aria-selected") == "true"
    assert page.locator(".p-select-button__value").first.inner_text() == "fraud-detector"
    items = page.locator(".markdown-renderer__list-item").all_inner_texts()
    for name in SHIPPED:
        spec = load_spec(ROOT / "deployments/models" / f"{name}.yaml")
        assert f"{name}: {one_line(spec)}" in items, items
    open_choice(page)
    shot(page, "03-release-form-models")
    assert page.locator(".p-select-option").all_inner_texts() == SHIPPED
    page.keyboard.press("Escape")


@pytest.fixture(scope="module")
def run_id(ui: Ui, form: Page) -> str:
    """Pick churn and submit: the run the form started, finished on the worker."""
    page = form
    open_choice(page)
    page.locator(".p-select-option", has_text=re.compile(rf"^{MODEL}$")).click()
    assert page.locator(".p-select-button__value").first.inner_text() == MODEL
    shot(page, "04-release-form-churn")
    deployment = page.url.split("/deployments/deployment/")[1].split("/")[0]
    page.get_by_role("button", name="Submit").click()
    # The UI goes back to the deployment and says the run was scheduled; the run is its newest.
    page.wait_for_url(re.compile(rf".*/deployments/deployment/{deployment}(\?.*)?$"))
    page.get_by_text("Upcoming", exact=True).wait_for()  # the deployment's page again
    shot(page, "05-release-scheduled")
    [newest] = ui.post(
        "/flow_runs/filter",
        {
            "deployments": {"id": {"any_": [deployment]}},
            "sort": "EXPECTED_START_TIME_DESC",
            "limit": 1,
        },
    )
    run = str(newest["id"])
    assert ui.wait(run) == "COMPLETED"
    return run


def test_a_run_started_from_the_form_releases_the_model_it_names(ui: Ui, run_id: str) -> None:
    [run] = ui.post("/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    # The model by name; resume_from left empty is not sent (the flow's None).
    assert run["parameters"] == {"spec_path": MODEL, "wait": True, "force": False}
    champion = model_registry.alias_version(ui.settings, MODEL, model_registry.CHAMPION)
    assert champion is not None
    page = ui.prefect
    page.goto(f"{ui.url}/runs/flow-run/{run_id}")
    page.get_by_text("Artifacts", exact=True).click()  # the run page's tab
    card = page.get_by_text(f"release-{MODEL}", exact=True).first
    card.wait_for()
    shot(page, "06-run-artifacts")
    listed = page.locator("body").inner_text()
    assert f"The release of {MODEL}" in listed  # every artifact has a description
    card.click()  # as a person opens it
    page.wait_for_url(re.compile(r".*/artifacts/artifact/"))
    page.get_by_role("heading", name=f"{MODEL} v1 is champion").wait_for()


def test_the_release_artifact_fits_and_links_to_mlflow(ui: Ui, run_id: str) -> None:
    text = ui.open_artifact(ui.artifact(f"release-{MODEL}", run_id), "07-release-artifact")
    page = ui.prefect
    assert wider_than_the_pane(page) == []
    headers = page.locator("table th").all_inner_texts()
    assert headers[:2] == ["what", "outcome"], headers
    assert f"The release of {MODEL}" in text  # its description
    mlflow = ui.production.env["CONVEYOR_MLFLOW_UI_URL"]
    links = [a.get_attribute("href") or "" for a in page.locator("table a").all()]
    assert any(h.startswith(f"{mlflow}/#/models/{MODEL}/versions/") for h in links), links
    assert any("/artifacts/model_card.md" in h for h in links), links


def test_a_canary_release_artifact_fits_too(
    ui: Ui, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A canary release's artifact has rows a direct one lacks; it overflowed at a laptop's
    width (#42). Released through the deployment, as the form does, on the edge's routes."""
    # The shipped spec as the form released it, only its rollout changed: a smaller one would
    # train a challenger the gate refuses against that champion.
    raw = yaml.safe_load((ROOT / "deployments/models" / f"{MODEL}.yaml").read_text())
    raw["promotion"] |= {"rollout": "canary", "canary": SMALL_CANARY}
    spec = tmp_path_factory.mktemp("ui-canary") / f"{MODEL}.yaml"
    spec.write_text(yaml.safe_dump(raw))
    [deployment] = ui.post("/deployments/filter", {"deployments": {"name": {"any_": ["release"]}}})
    response = httpx.post(
        f"{ui.production.api}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"spec_path": str(spec), "force": True}},
        auth=ui.production.auth,
        timeout=10,
    )
    response.raise_for_status()
    run = str(response.json()["id"])
    assert ui.wait(run) == "COMPLETED", ui.production.flow_run_logs(run)
    text = ui.open_artifact(ui.artifact(f"release-{MODEL}", run), "07b-canary-release-artifact")
    assert "canary" in text and "reached it" in text
    assert wider_than_the_pane(ui.prefect) == []


def test_the_churn_model_card_speaks_of_customers_without_machine_paths(
    ui: Ui, run_id: str
) -> None:
    text = ui.open_artifact(ui.artifact(f"model-card-{MODEL}", run_id), "08-model-card")
    card = text.split(f"Model card: {MODEL}", 1)[1]
    assert "customer" in card and "transaction" not in card.lower()
    assert MACHINE_PATH.search(card) is None, MACHINE_PATH.search(card)
    for section in ("Decision", "Data", "Holdout metrics", "Serving", "Lineage"):
        assert section in card
    assert wider_than_the_pane(ui.prefect) == []


def test_the_fleet_status_fits_at_a_laptops_width(
    ui: Ui, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The nightly run over churn alone (its status lists every model the stack's registry
    holds, the other tests' included: the widest table this suite can make)."""
    fleet = tmp_path_factory.mktemp("ui-fleet")
    shutil.copy(ROOT / "deployments/models" / f"{MODEL}.yaml", fleet)
    [deployment] = ui.post(
        "/deployments/filter", {"deployments": {"name": {"any_": ["nightly-drift"]}}}
    )
    response = httpx.post(
        f"{ui.production.api}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": {"spec_dir": str(fleet)}},
        auth=ui.production.auth,
        timeout=10,
    )
    response.raise_for_status()
    run = str(response.json()["id"])
    assert ui.wait(run) == "COMPLETED"
    text = ui.open_artifact(ui.artifact("fleet-status", run), "09-fleet-status")
    page = ui.prefect
    assert wider_than_the_pane(page) == []
    assert "Fleet status" in text and re.search(rf"{MODEL}: (no )?drift", text)
    links = [a.get_attribute("href") or "" for a in page.locator("a").all()]
    assert any("/artifacts/drift/drift_report.html" in h for h in links), links


@pytest.fixture(scope="module")
def mlflow_page(ui: Ui) -> Iterator[Page]:
    secrets = ui.production.secrets
    context = ui.browser.new_context(
        viewport={"width": WIDTH, "height": HEIGHT},
        # What a person types into the browser's basic-auth prompt.
        http_credentials={
            "username": secrets["MLFLOW_ADMIN_USER"],
            "password": secrets["MLFLOW_ADMIN_PASSWORD"],
        },
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def test_the_mlflow_model_page_shows_the_alias_history_as_a_list_and_no_json(
    ui: Ui, run_id: str, mlflow_page: Page
) -> None:
    """MLflow draws markdown tables without borders or padding and lists a model's tags as raw
    JSON (#42): the history is a list, and its record is in tags MLflow's UI does not list."""
    mlflow = ui.production.env["CONVEYOR_MLFLOW_UI_URL"]
    mlflow_page.goto(f"{mlflow}/#/models/{MODEL}")
    mlflow_page.get_by_text("Alias history").first.wait_for()
    shot(mlflow_page, "10-mlflow-model")
    items = mlflow_page.locator("li", has_text=" UTC").all_inner_texts()
    assert any("champion → v1 (was none)" in item for item in items), items
    text = mlflow_page.locator("body").inner_text()
    assert '"alias":' not in text and "conveyor.history" not in text
    assert MACHINE_PATH.search(text) is None, MACHINE_PATH.search(text)
    # A version's page: its lineage, and no path of the machine that trained it.
    mlflow_page.goto(ui_links.model_version_url(ui.settings, MODEL, 1) or "")
    mlflow_page.get_by_text(tracking.TAG_SOURCE).first.wait_for()
    shot(mlflow_page, "10b-mlflow-model-version")
    text = mlflow_page.locator("body").inner_text()
    assert MACHINE_PATH.search(text) is None, MACHINE_PATH.search(text)


def test_mlflow_opens_conveyors_experiment_on_its_runs(
    ui: Ui, run_id: str, mlflow_page: Page
) -> None:
    """Marked a machine-learning experiment, and the links conveyor writes open it on its runs
    (MLflow's UI otherwise starts in its GenAI mode: traces, token cost)."""
    experiment = mlflow_store.client(ui.settings).get_experiment_by_name(MODEL)
    assert experiment is not None
    assert experiment.tags[tracking.EXPERIMENT_KIND[0]] == tracking.EXPERIMENT_KIND[1]
    version = model_registry.alias_version(ui.settings, MODEL, model_registry.CHAMPION)
    assert version is not None
    ref = model_registry.version_ref(ui.settings, MODEL, version)
    mlflow_page.goto(ui_links.run_url(ui.settings, ref.run_id, experiment.experiment_id))
    mlflow_page.get_by_text("Artifacts").first.wait_for()
    shot(mlflow_page, "11-mlflow-run")
    page = mlflow_page.locator("body").inner_text()
    assert "roc_auc" in page and "Token Usage" not in page
    card = ui_links.artifact_url(ui.settings, f"runs:/{ref.run_id}/model_card.md")
    assert card is not None
    mlflow_page.goto(card)
    mlflow_page.get_by_text(f"Model card: {MODEL} version {version}").first.wait_for()
    shot(mlflow_page, "12-mlflow-model-card")


def test_every_run_form_reads_without_type_names(ui: Ui, run_id: str) -> None:
    """Each deployment's form: titles in words, no `str`/`None` toggle, a model by name."""
    page = ui.prefect
    for deployment in ui.post("/deployments/filter", {}):
        name = str(deployment["name"])
        page.goto(f"{ui.url}/deployments/deployment/{deployment['id']}/run")
        page.get_by_text("Parameters", exact=True).first.wait_for()
        page.get_by_role("button", name="Submit").wait_for()
        shot(page, f"13-form-{name}")
        labels = page.locator(".schema-form-property__label").all_inner_texts()
        text = page.locator("body").inner_text()
        assert labels, name
        assert 'Property is type "None"' not in text, name
        # Every parameter says what it is (the flows' docstrings, as Prefect reads them).
        described = page.locator(".schema-form-property__description").count()
        assert described == len(labels), (name, labels)
        assert not [label for label in labels if "_" in label], (name, labels)
        if any(
            p in deployment["parameter_openapi_schema"]["properties"]
            for p in ("spec_path", "model")
        ):  # type: ignore[index]
            assert page.get_by_role("button", name="a model of the fleet").count() == 1, name


def test_make_stack_hands_over_without_printing_a_secret(ui: Ui) -> None:
    said = ui.production.up()
    assert f"Credentials: {ui.production.root / 'secrets.env'}" in said
    assert "Prefect UI" in said and "MLflow UI" in said and "make deploy" in said
    for name, value in ui.production.secrets.items():
        if name.endswith(("PASSWORD", "KEY")):
            assert value not in said, name
        elif name == "PREFECT_AUTH_STRING":
            assert value.split(":", 1)[1] not in said, name
