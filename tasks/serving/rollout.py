"""What Triton serves for a model, as a release changes it: versions published to the repository,
the candidate served under its own name, the live set (champion + previous) gone live, and a
candidate withdrawn."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from pydantic import BaseModel

from tasks.core import names
from tasks.core.errors import ServiceUnavailableError
from tasks.core.names import candidate_name
from tasks.core.renderings import rendering_of
from tasks.core.settings import Settings
from tasks.core.spec import ModelSpec, ServingSpec
from tasks.core.storage import MANIFEST, Store, file_hashes, open_store, read_verified, verify_dir
from tasks.modeling.onnx import sha256
from tasks.modeling.onnx_export import OnnxArtifact
from tasks.registry import model_registry, tracking
from tasks.registry.registry_state import RegistryState
from tasks.serving import edge_routes, model_config, replicas
from tasks.serving.model_config import config_text
from tasks.serving.triton_client import (
    TritonError,
    TritonUnreachableError,
    control_client,
    load_candidate,
    load_versions,
    loaded_versions,
    unload_model,
)
from tasks.serving.triton_ports import Endpoint


class PublishResult(BaseModel):
    repository: str
    model: str
    version: int
    files: dict[str, str]  # name → sha256


def version_files(onnx_bytes: bytes, backend: str) -> dict[str, bytes]:
    return rendering_of(backend).files(onnx_bytes)


def publish_version(
    store: Store,
    repository: str,
    spec: ModelSpec,
    version: int,
    onnx_bytes: bytes,
    backend: str,
) -> PublishResult:
    """Write `<model>/<version>/` all at once with its manifest.

    The model's config.pbtxt is written when a version goes live (`go_live`), so the repository
    on disk always describes what is served."""
    files = version_files(onnx_bytes, backend)
    key = f"{spec.name}/{version}"
    if store.exists(key):
        # A retry of the same export finds its own complete version; anything else is a conflict.
        if verify_dir(store, key) != file_hashes(files):
            raise TritonError(
                f"{repository}/{key} already holds different files. Version numbers come from "
                "the MLflow registry; this repository belongs to another registry or was edited "
                "by hand. Point CONVEYOR_MODEL_REPOSITORY at this registry's repository."
            )
    else:
        store.publish_dir(key, files)
    return PublishResult(
        repository=repository, model=spec.name, version=version, files=verify_dir(store, key)
    )


class ServingState(BaseModel):
    endpoint: Endpoint  # the first replica acted on: the one the smoke test measures
    model: str
    versions: list[int]
    replicas: list[str] = []  # every replica that serves `versions` now

    def where(self) -> str:
        return ", ".join(self.replicas) or self.endpoint.http


def publish(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, onnx: OnnxArtifact
) -> PublishResult:
    data = tracking.read_artifact(settings, onnx.uri)
    actual = sha256(data)
    if actual != onnx.sha256:
        raise TritonError(
            f"{onnx.uri} has sha256 {actual[:12]}…, the export recorded {onnx.sha256[:12]}…; "
            "the artifact store was modified. Export again."
        )
    store = open_store(settings.repository)
    return publish_version(
        store, settings.repository, spec, ref.version, data, settings.triton_backend
    )


def serving_for(settings: Settings, spec: ModelSpec, version: int) -> ServingSpec:
    """The serving configuration a version was released with (tuned), else the spec's."""
    tagged = model_registry.version_tag(settings, spec.name, version, model_registry.TAG_SERVING)
    return ServingSpec.model_validate_json(tagged) if tagged else spec.serving


def serve_candidate(
    settings: Settings,
    spec: ModelSpec,
    ref: model_registry.ModelRef,
    serving: ServingSpec | None = None,
) -> ServingState:
    """Serve the candidate's verified files under its candidate name on every replica that is up,
    reachable for the smoke test but never by production callers, who keep getting the champion
    until the swap. Loaded on each, not one: a replica that cannot load it (another build, no
    memory) fails the release here, before anything production reaches has changed."""
    files = read_verified(open_store(settings.repository), f"{spec.name}/{ref.version}")
    targets = replicas.quorum(settings, f"serving {spec.name} v{ref.version} as the candidate")
    name = ""
    for replica in targets:
        name = load_candidate(settings, replica.endpoint, spec, ref.version, files, serving)
    return ServingState(
        endpoint=targets[0].endpoint,
        model=name,
        versions=[ref.version],
        replicas=[r.name for r in targets],
    )


def live_versions(settings: Settings, spec: ModelSpec) -> list[int]:
    """What the registry says is live (champion, and previous for instant rollback)."""
    store = open_store(settings.repository)
    live = {
        model_registry.alias_version(settings, spec.name, a)
        for a in (model_registry.PREVIOUS, model_registry.CHAMPION)
    }
    return sorted(v for v in live if v is not None and store.exists(f"{spec.name}/{v}/{MANIFEST}"))


class LiveSet(BaseModel):
    """What was live when a release started, kept so that its clean-up can put it back without
    the registry (which may be what failed)."""

    versions: list[int]
    serving: ServingSpec | None = None


def live_set(settings: Settings, spec: ModelSpec, state: RegistryState) -> LiveSet:
    """What `state` says is live and has its files, with the newest's serving configuration."""
    store = open_store(settings.repository)
    versions = [v for v in state.live() if store.exists(f"{spec.name}/{v}/{MANIFEST}")]
    if not versions:
        return LiveSet(versions=[])
    newest = next(a for a in (state.champion, state.previous) if a and a.version == max(versions))
    tagged = newest.tags.get(model_registry.TAG_SERVING)
    serving = ServingSpec.model_validate_json(tagged) if tagged else spec.serving
    return LiveSet(versions=versions, serving=serving)


def go_live(
    settings: Settings,
    spec: ModelSpec,
    versions: list[int],
    serving: ServingSpec | None = None,
    targets: list[replicas.Replica] | None = None,
) -> ServingState:
    """Make exactly `versions` loaded under the model's own name on every replica (`targets`:
    default, every one that is up when enough are); the newest answers unversioned requests,
    with the serving configuration it was released with. Every file is verified first, and
    config.pbtxt is rewritten afterwards, so the repository on disk matches what is served (a
    replica restarted on it loads the same set).

    All or nothing: a replica that fails puts the ones already changed back on what the
    repository's config.pbtxt says (the set served before), then the error is raised."""
    store = open_store(settings.repository)
    for version in versions:
        verify_dir(store, f"{spec.name}/{version}")
    if targets is None:
        targets = replicas.quorum(settings, f"serving {spec.name} {versions}")
    names = [r.name for r in targets]
    if not versions:
        for replica in targets:
            unload_model(replica.endpoint, spec.name)
        return ServingState(
            endpoint=targets[0].endpoint, model=spec.name, versions=[], replicas=names
        )
    serving = serving or serving_for(settings, spec, max(versions))
    done: list[replicas.Replica] = []
    for replica in targets:
        try:
            config = load_versions(
                replica.endpoint,
                spec,
                settings.triton_backend,
                versions,
                settings.triton_load_timeout_s,
                serving,
            )
        except Exception as exc:
            put_back = _put_back(settings, spec, [*done, replica])
            # A replica that died is a component failing under the step, not a verdict.
            kind = (
                TritonUnreachableError if isinstance(exc, ServiceUnavailableError) else TritonError
            )
            raise kind(
                f"{replica.name} failed while {spec.name} {versions} went live ({exc}); {put_back}"
            ) from exc
        done.append(replica)
    store.write_file(f"{spec.name}/config.pbtxt", config_text(config).encode())
    return ServingState(
        endpoint=targets[0].endpoint, model=spec.name, versions=sorted(versions), replicas=names
    )


def _put_back(settings: Settings, spec: ModelSpec, changed: list[replicas.Replica]) -> str:
    """Replicas a failed go-live changed, back on the repository's config.pbtxt (written by the
    last go-live that finished everywhere); say what became of each.

    The config travels in the load request: without it Triton finds a replica whose last load
    carried its own config (every go-live's) unchanged, and leaves the set it was failed on."""
    store = open_store(settings.repository)
    key = f"{spec.name}/config.pbtxt"
    before = model_config.parse_config(store.read_file(key).decode()) if store.exists(key) else None
    said = []
    for replica in changed:
        try:
            if before is None:
                unload_model(replica.endpoint, spec.name)
            else:
                config, timeout_s = model_config.config_json(before), settings.triton_load_timeout_s
                control_client(replica.endpoint).load(spec.name, config, timeout_s=timeout_s)
                wanted = sorted(before.version_policy.specific.versions)
                if (served := loaded_versions(replica.endpoint, spec.name)) != wanted:
                    raise TritonError(f"it serves {served}, not {wanted}")
            said.append(f"{replica.name} put back")
        except Exception as exc:  # the failing replica itself, most often: said, not raised
            said.append(f"{replica.name} not put back ({type(exc).__name__}: {str(exc)[:120]})")
    return "; ".join(said) + " on what was served before"


def restore_serving(
    settings: Settings, spec: ModelSpec, targets: list[replicas.Replica] | None = None
) -> ServingState:
    """Serve what the registry says is live on `targets` (default: every replica that answers:
    putting production back never waits for a quorum)."""
    return go_live(
        settings,
        spec,
        live_versions(settings, spec),
        targets=targets or replicas.answering(settings),
    )


class Withdrawal(BaseModel):
    state: ServingState
    files_kept: str | None = None  # why the version's files are still in the repository
    unreachable: list[str] = []  # replicas that did not answer: `conveyor doctor --repair`


def withdraw(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, before: LiveSet | None = None
) -> Withdrawal:
    """Undo a candidate on every replica that answers: its candidate model unloaded, Triton back
    to what the registry says is live (it may have been swapped in before a later step failed),
    the version's files gone.

    With the registry unreachable (`before` given): the replicas go back to what was live when
    the release started, and the files stay, since the promotion may have moved an alias onto
    them before the registry went; with the repository unreachable, or a replica that did not
    answer (it may still serve the version), they stay too.
    `conveyor doctor --repair` settles either once the server is back."""
    fleet = replicas.survey(settings)
    if not fleet.up:
        raise TritonUnreachableError(
            f"no Triton replica answers ({fleet.names(fleet.down)}), so {spec.name} "
            f"v{ref.version} could not be withdrawn from them; start them and run `conveyor "
            f"doctor {spec.name} --repair`"
        )
    # A canary's route first: every caller's request to the champion again (the edge would
    # fall back to it anyway once the canary is gone, one failed hop later).
    edge_routes.close_route(settings, spec.name)
    swapped = False
    for replica in fleet.up:
        unload_model(replica.endpoint, candidate_name(spec.name, ref.version))
        unload_model(replica.endpoint, names.canary_name(spec.name))
        swapped |= ref.version in loaded_versions(replica.endpoint, spec.name)
    kept = None
    if swapped:
        try:
            go_live(settings, spec, live_versions(settings, spec), targets=fleet.up)
        except MlflowException:
            if before is None:
                raise
            go_live(settings, spec, before.versions, before.serving, targets=fleet.up)
            kept = "the registry did not answer"
    if kept is None and fleet.down:
        kept = f"{fleet.names(fleet.down)} did not answer and may still serve it"
    if kept is None:
        try:
            open_store(settings.repository).remove_dir(f"{spec.name}/{ref.version}")
        except Exception as exc:  # S3 or the disk failed: often what failed the release
            kept = f"the repository did not answer ({type(exc).__name__})"
    first = fleet.up[0].endpoint
    state = ServingState(
        endpoint=first,
        model=spec.name,
        versions=loaded_versions(first, spec.name),
        replicas=[r.name for r in fleet.up],
    )
    return Withdrawal(state=state, files_kept=kept, unreachable=[r.name for r in fleet.down])


def serve_only(settings: Settings, spec: ModelSpec, version: int) -> ServingState:
    """Make `version` the only loaded version (its files verified first)."""
    if not open_store(settings.repository).exists(f"{spec.name}/{version}"):
        raise TritonError(
            f"{settings.repository}/{spec.name}/{version} does not exist; it cannot be served"
        )
    return go_live(settings, spec, [version])


@task(name="publish-version")
def publish_task(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, onnx: OnnxArtifact
) -> PublishResult:
    result = publish(settings, spec, ref, onnx)
    get_run_logger().info(
        "published %s/%s/%d (%s)",
        result.repository,
        spec.name,
        ref.version,
        ", ".join(result.files),
    )
    return result


@task(name="serve-candidate")
def serve_candidate_task(
    settings: Settings,
    spec: ModelSpec,
    ref: model_registry.ModelRef,
    serving: ServingSpec | None = None,
) -> ServingState:
    state = serve_candidate(settings, spec, ref, serving)
    get_run_logger().info(
        "%s serve(s) the candidate as %s v%d", state.where(), state.model, ref.version
    )
    return state


@task(name="withdraw-candidate")
def withdraw_task(
    settings: Settings, spec: ModelSpec, ref: model_registry.ModelRef, before: LiveSet | None = None
) -> Withdrawal:
    done = withdraw(settings, spec, ref, before)
    get_run_logger().warning(
        "withdrew %s version %d: Triton serves versions %s, its files are %s",
        spec.name,
        ref.version,
        done.state.versions,
        f"kept ({done.files_kept}) until `conveyor doctor --repair`"
        if done.files_kept
        else "removed",
    )
    return done


@task(name="serve-only")
def serve_only_task(settings: Settings, spec: ModelSpec, version: int) -> ServingState:
    state = serve_only(settings, spec, version)
    get_run_logger().info("%s serve(s) %s v%d only", state.where(), spec.name, version)
    return state


@task(name="restore-serving")
def restore_serving_task(settings: Settings, spec: ModelSpec) -> ServingState:
    state = restore_serving(settings, spec)
    get_run_logger().warning(
        "%s serve(s) %s versions %s again, as the registry's aliases say",
        state.where(),
        spec.name,
        state.versions,
    )
    return state
