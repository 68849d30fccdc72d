"""`conveyor triton`: the embedded Triton server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from cli.app import _expected_errors, console, triton_app
from tasks.core.errors import ConveyorError
from tasks.core.settings import Settings
from tasks.core.spec import load_spec


@triton_app.command("up")
def triton_up(
    spec: Annotated[
        Path | None,
        typer.Option("--spec", help="Only this model's spec (default: every released model)."),
    ] = None,
) -> None:
    """Start the embedded Triton (or, with CONVEYOR_TRITON_REPLICAS, reach every replica) and
    serve every released model's champion and previous on it, as `conveyor doctor --repair`
    does after a restart."""
    from tasks.ops.fleet import released_specs
    from tasks.serving import replicas, rollout, triton_server

    settings = Settings()
    with _expected_errors():
        models = [load_spec(spec)] if spec else released_specs(settings)
        if settings.triton_replicas:
            # Every replica that answers, whatever their number: bringing production to the
            # champion never waits for a quorum (`conveyor doctor` names the ones down).
            fleet = replicas.answering_fleet(settings)
            targets, where = fleet.up, fleet.names(fleet.up)
            down = f"; down: {fleet.names(fleet.down)}" if fleet.down else ""
        else:
            state = triton_server.ensure_running(settings)
            targets, down = None, ""
            where = f"Triton pid {state.pid} (http://{state.endpoint.http})"
    console.print(f"{where}{down}", highlight=False)
    if not spec and not models:
        console.print("no released model yet: `conveyor run` releases one", highlight=False)
    failed = 0
    for model_spec in models:
        try:
            serving = rollout.restore_serving(settings, model_spec, targets=targets)
        except ConveyorError as exc:  # one model's files or registry entry; the others still
            failed += 1
            console.print(f"{model_spec.name}: not served: {escape(str(exc))}", soft_wrap=True)
            continue
        console.print(
            f"{model_spec.name}: versions {serving.versions or 'none (no champion yet)'}",
            highlight=False,
        )
    if failed:
        raise typer.Exit(2)


@triton_app.command("down")
def triton_down() -> None:
    """Stop the embedded Triton."""
    from tasks.serving import triton_server

    stopped = triton_server.stop(Settings())
    console.print("stopped" if stopped else "the embedded Triton was not running")


@triton_app.command("status")
def triton_status() -> None:
    """Say whether Triton (the embedded one, the one TRITON_URL names, or each replica of
    CONVEYOR_TRITON_REPLICAS) is up, where, and what it serves; exit 1 if one is down."""
    from tasks.serving import replicas, triton_client, triton_server

    settings = Settings()
    if settings.embedded_triton:
        state = triton_server.status(settings)
        if state is None:
            console.print("the embedded Triton is not running (`conveyor triton up` starts it)")
            raise typer.Exit(1)
        described = {
            state.endpoint.http: (
                state.endpoint,
                f"pid {state.pid}, http://{state.endpoint.http}, grpc {state.endpoint.grpc}, "
                f"metrics {state.metrics_url}, repository {state.repository}",
            )
        }
    else:
        # Servers conveyor did not start (compose, `make stack`, a headless service's pods).
        fleet = replicas.configured(settings)
        described = {
            r.name: (r.endpoint, f"{r.name}: http://{r.endpoint.http}, grpc {r.endpoint.grpc}")
            for r in fleet
        }
    down = False
    for where, text in described.values():
        if not replicas.is_live(where):
            console.print(f"down: {text}")
            down = True
            continue
        with _expected_errors():
            ready = triton_client.control_client(where).ready_models()
        loaded = [f"{name}:{version or '?'}" for name, version in ready]
        console.print(f"up: {text}; loaded: {', '.join(loaded) or 'nothing'}")
    if down:
        raise typer.Exit(1)
