"""What `make deploy` runs after `prefect deploy --all`: the release deployments' run form in
the Prefect UI offers the fleet's models as a choice, each with its description.

Prefect derives a deployment's form from the flow's signature, where `spec_path` can only be a
free-text string (a choice generated from the spec directory at import would read the disk at
import, and go stale). So the choice is written into the deployments' parameter schema here,
from the specs on disk when deploying: re-run `make deploy` after adding a spec. A path outside
the fleet is still accepted (`anyOf`), since the server enforces the schema on every run.

    PREFECT_API_URL=… python -m infra.deploy_forms [DEPLOYMENT …]
"""

from __future__ import annotations

import sys
from typing import Any

from tasks.core.settings import Settings
from tasks.ops.fleet import load_fleet

RELEASE_DEPLOYMENTS = ("release/release", "release/release-gpu")


def spec_path_schema(settings: Settings, default: str) -> dict[str, Any]:
    fleet = load_fleet(settings)
    lines = [
        f"- `{path}`: {spec.name}: {' '.join(spec.description.split())[:160] or '(no description)'}"
        for path, spec in fleet
    ]
    return {
        "title": "model spec",
        "description": "The model to release: one of the fleet's specs, or the path of "
        "another spec file on the worker.\n\n" + "\n".join(lines),
        "default": default,
        "position": 0,
        "anyOf": [
            {"title": "a model of the fleet", "enum": [str(path) for path, _ in fleet]},
            {"title": "another spec file", "type": "string"},
        ],
    }


def main(names: list[str]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    settings = Settings()
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue  # not deployed here (e.g. no gpu pool)
            schema = dict(deployment.parameter_openapi_schema or {})
            properties = dict(schema.get("properties", {}))
            default = str(properties.get("spec_path", {}).get("default", settings.spec))
            properties["spec_path"] = spec_path_schema(settings, default)
            schema["properties"] = properties
            client.update_deployment(
                deployment.id, DeploymentUpdate(parameter_openapi_schema=schema)
            )
            offered = properties["spec_path"]["anyOf"][0]["enum"]
            print(f"{name}: the run form offers {len(offered)} models")


if __name__ == "__main__":
    main(sys.argv[1:] or list(RELEASE_DEPLOYMENTS))
