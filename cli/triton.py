"""`conveyor triton`: the embedded Triton server."""

from __future__ import annotations

import typer

from cli.app import SpecOption, _expected_errors, _spec_path, console, triton_app
from tasks.core.settings import Settings
from tasks.core.spec import load_spec


@triton_app.command("up")
def triton_up(spec: SpecOption = None) -> None:
    """Start the embedded Triton and load the spec's champion (and previous) version."""
    from tasks.serving import rollout, triton_server

    settings = Settings()
    with _expected_errors():
        model_spec = load_spec(_spec_path(spec, settings))
        state = triton_server.ensure_running(settings)
        serving = rollout.restore_serving(settings, model_spec)
    console.print(
        f"Triton pid {state.pid}: http://{state.endpoint.http}, grpc {state.endpoint.grpc}, "
        f"metrics {state.metrics_url}; {model_spec.name} versions loaded: "
        f"{serving.versions or 'none (no champion yet)'}; log {state.log_path}"
    )


@triton_app.command("down")
def triton_down() -> None:
    """Stop the embedded Triton."""
    from tasks.serving import triton_server

    stopped = triton_server.stop(Settings())
    console.print("stopped" if stopped else "the embedded Triton was not running")


@triton_app.command("status")
def triton_status() -> None:
    """Say whether Triton (the embedded one, or the one TRITON_URL names) is up, where, and
    what it serves."""
    from tasks.serving import triton_client, triton_server

    settings = Settings()
    if not settings.embedded_triton:
        # TRITON_URL points at a server conveyor did not start (compose, `make stack`).
        where = triton_server.endpoint(settings)
        described = f"http://{where.http}, grpc {where.grpc} (external: TRITON_URL)"
    else:
        state = triton_server.status(settings)
        if state is None:
            console.print("the embedded Triton is not running (`conveyor triton up` starts it)")
            raise typer.Exit(1)
        where = state.endpoint
        described = (
            f"pid {state.pid}, http://{where.http}, grpc {where.grpc}, "
            f"metrics {state.metrics_url}, repository {state.repository}"
        )
    with _expected_errors():
        ready = triton_client.control_client(where).ready_models()
    loaded = [f"{name}:{version or '?'}" for name, version in ready]
    console.print(f"up: {described}; loaded: {', '.join(loaded) or 'nothing'}")
