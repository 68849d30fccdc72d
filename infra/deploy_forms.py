"""What `make deploy` runs after `prefect deploy --all`: the run forms of conveyor's deployments
in the Prefect UI as a person reads them.

Prefect derives a deployment's form from the flow's signature: a model can only be a free-text
path there (a choice generated from the spec directory at import would read the disk at import,
and go stale), an optional parameter shows a `str`/`None` toggle and the text `Property is type
"None"`, and titles are Python names. So the schema of every deployment in prefect.yaml is
rewritten here, from the specs on disk when deploying (re-run `make deploy` after adding one):

- a model (`spec_path`, or `model` for the flows that take a registered name) is chosen by name
  from the fleet, the first tab and the default, each name with the first sentence of its
  description; a spec file's path is still accepted (`anyOf`), since the server enforces the
  schema on every run and flows resolve a fleet name to its file (`known_specs.spec_file`);
- the full descriptions go into the deployment's description (its page in the UI);
- `X | None` becomes `X`: an empty field is the flow's default (None), not a type to pick;
- titles are words.

    PREFECT_API_URL=… python -m infra.deploy_forms
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec
from tasks.ops.fleet import load_fleet

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
# Parameters that name one model; `spec_path` takes a file too, `model` a registered name.
MODEL_PARAMETERS = ("spec_path", "model")
MODELS_HEADING = "Models of the fleet (deployments/models/):"


def one_line(spec: ModelSpec) -> str:
    """The description's first sentence: what the model is for, short enough for a help line."""
    text = " ".join(spec.description.split())
    if not text:
        return "(no description in its spec)"
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    return first if len(first) <= 140 else first[:140].rsplit(" ", 1)[0].rstrip(",;") + "…"


def by_name(fleet: list[tuple[Path, ModelSpec]], value: Any) -> Any:
    """A fleet spec's path as its model's name; anything else as it is."""
    return next((spec.name for path, spec in fleet if str(path) == str(value)), value)


def model_choice(
    fleet: list[tuple[Path, ModelSpec]], name: str, current: dict[str, Any]
) -> dict[str, Any]:
    """A model of the fleet by name (the default), or what the flow also accepts."""
    names = [spec.name for _, spec in fleet]
    # prefect.yaml's default is a file: shown by its model's name. A required parameter
    # (explain's `model`) stays without one.
    default = {}
    if "default" in current:
        default["default"] = by_name(fleet, current["default"])
    # The UI's markdown keeps a list only with blank lines between its items.
    items = "\n\n".join(f"- **{spec.name}**: {one_line(spec)}" for _, spec in fleet)
    other = "a spec file's path on the worker" if name == "spec_path" else "a registered model"
    return {
        "title": "model",
        "description": f"A model of the fleet (the first tab), or {other}.\n\n{items}",
        **default,
        "position": current.get("position", 0),
        "anyOf": [
            {"title": "a model of the fleet", "type": "string", "enum": names},
            {
                "title": "another spec file" if name == "spec_path" else "another model",
                "type": "string",
            },
        ],
    }


def plain(name: str, prop: dict[str, Any]) -> dict[str, Any]:
    """`X | None` as `X`, with a title in words."""
    prop = dict(prop)
    options = prop.get("anyOf")
    if options and len(options) == 2 and {"type": "null"} in options:
        [kept] = [o for o in options if o != {"type": "null"}]
        del prop["anyOf"]
        prop = kept | prop
        if prop.get("default", "") is None:
            del prop["default"]  # left empty, the parameter is not sent: the flow's None
    if prop.get("title") in (None, name, name.replace("_", " ").title()):
        prop["title"] = name.replace("_", " ")
    return prop


def form(
    schema: dict[str, Any], fleet: list[tuple[Path, ModelSpec]]
) -> tuple[dict[str, Any], bool]:
    """The deployment's parameter schema as the run form should show it; whether it names a
    model."""
    properties = dict(schema.get("properties", {}))
    names_model = False
    for name, prop in properties.items():
        if name in MODEL_PARAMETERS:
            properties[name] = model_choice(fleet, name, prop)
            names_model = True
        else:
            properties[name] = plain(name, prop)
    return {**schema, "properties": properties}, names_model


def described(description: str, fleet: list[tuple[Path, ModelSpec]]) -> str:
    """The deployment's own description and, below it, each model's full one."""
    own = description.split(MODELS_HEADING)[0].rstrip()
    models = "\n\n".join(
        f"- **{spec.name}** (`{path.name}`, {spec.task.value}): "
        f"{' '.join(spec.description.split())}"
        for path, spec in fleet
    )
    return f"{own}\n\n{MODELS_HEADING}\n\n{models}"


def deployment_names() -> list[str]:
    return [d["name"] for d in yaml.safe_load(PREFECT_YAML.read_text())["deployments"]]


def main() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    fleet = load_fleet(Settings())
    with get_client(sync_client=True) as client:
        wanted = DeploymentFilter(name=DeploymentFilterName(any_=deployment_names()))
        for deployment in client.read_deployments(deployment_filter=wanted):
            schema, names_model = form(dict(deployment.parameter_openapi_schema or {}), fleet)
            update = DeploymentUpdate(parameter_openapi_schema=schema)
            if names_model:
                update.description = described(deployment.description or "", fleet)
                # prefect.yaml's parameters name a file; the form opens on them, so by name.
                update.parameters = {
                    k: by_name(fleet, v) if k in MODEL_PARAMETERS else v
                    for k, v in (deployment.parameters or {}).items()
                }
            client.update_deployment(deployment.id, update)
            print(
                f"{deployment.name}: run form rewritten"
                + (f", {len(fleet)} models offered by name" if names_model else "")
            )


if __name__ == "__main__":
    from tasks.core.errors import ConveyorError

    try:
        main()
    except ConveyorError as exc:  # a spec that does not load: one paragraph, no traceback
        sys.exit(f"make deploy: the run forms were not written: {exc}")
