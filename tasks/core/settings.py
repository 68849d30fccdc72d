"""Run-time configuration: `Settings`, where conveyor keeps its state and which servers it talks
to, from the environment (prefix `CONVEYOR_`). A model's contract is `tasks.core.spec`.

Nothing here reads the environment or the disk at import; callers build a `Settings()` when a run
starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tasks.core.renderings import RENDERINGS
from tasks.core.spec import DEFAULT_SPEC, SPEC_DIR


class TritonAddress(BaseModel):
    """One Triton replica: its HTTP and gRPC host:port (a pod behind a headless service)."""

    http: str
    grpc: str


class Settings(BaseSettings):
    """Where conveyor keeps its state and which servers it talks to (env prefix `CONVEYOR_`)."""

    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore", populate_by_name=True)

    home: Path = Field(default=Path(".conveyor"), description="State directory.")
    spec: Path = Field(default=DEFAULT_SPEC, description="Model spec used when none is given.")
    spec_dir: Path = Field(
        default=SPEC_DIR, description="The fleet: one spec per model (`run --all`, `status`)."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default: SQLite under home."
    )
    mlflow_ui_url: str = Field(
        default="http://127.0.0.1:5000", description="Where the MLflow UI is, for links."
    )
    model_repository: str | None = Field(
        default=None, description="Triton model repository; default: home/model_repository."
    )
    triton_http_url: str | None = Field(
        default=None,
        # TRITON_URL is what Triton's own tooling and most worker images already set.
        validation_alias=AliasChoices("CONVEYOR_TRITON_HTTP_URL", "TRITON_URL"),
        description="An external Triton (host:port); unset: the embedded server.",
    )
    triton_grpc_url: str | None = Field(default=None, description="gRPC host:port of that Triton.")
    triton_replicas: Annotated[list[TritonAddress], NoDecode] = Field(
        default_factory=list,
        description="The Triton replicas every release serves on, as `http/grpc,http/grpc` "
        "(host:port each) or a JSON list of {http, grpc}; unset: the one Triton above.",
    )
    triton_min_replicas: int | None = Field(
        default=None,
        ge=1,
        description="How many replicas must be up for a release or rollback to start; default: "
        "all of them. The ones down are brought to the champion by `conveyor doctor --repair`.",
    )
    edge_http_url: str | None = Field(
        default=None,
        description="The edge (balancer) in front of the replicas, host:port: the swap probe and "
        "benchmarks go through it, as callers do; unset: straight to the first replica.",
    )
    edge_grpc_url: str | None = Field(default=None, description="gRPC host:port of the edge.")
    edge_probe_rate_per_s: float = Field(
        default=200.0,
        gt=0,
        description="Requests per second conveyor's own probes (swap, canary) send through the "
        "edge, all clients together: under the edge's per-client rate (the stack's is 1,000/s), "
        "so a probe is never refused as an abusive caller would be.",
    )
    edge_ca_file: Path | None = Field(
        default=None,
        description="CA certificate the edge's TLS is checked against; unset: the edge is plain.",
    )
    edge_routes_dir: Path | None = Field(
        default=None,
        description="The edge's canary routes directory (`routes` beside its nginx.conf), where "
        "a canary release writes the share of traffic its candidate gets; unset: no canary.",
    )
    triton_backend: str = Field(
        default="python",
        description="How Triton runs a served version (`tasks.core.renderings`): python "
        "(embedded build) or onnxruntime (production).",
    )
    triton_http_port: int = Field(default=0, ge=0, le=65535, description="0 = a free port.")
    triton_grpc_port: int = Field(default=0, ge=0, le=65535, description="0 = a free port.")
    triton_metrics_port: int = Field(default=0, ge=0, le=65535, description="0 = a free port.")
    task_runner: Literal["threads", "dask"] = Field(
        default="threads", description="Where search trials run: threads, or a Dask cluster."
    )
    dask_address: str | None = Field(
        default=None, description="An existing Dask scheduler; unset: a local cluster."
    )
    dask_timeout_s: float = Field(
        default=20.0, gt=0, description="How long to try reaching the Dask scheduler."
    )
    snapshot_root: str | None = Field(
        default=None,
        description="Where `compute: dask` releases keep their copies of the table's pieces (a "
        "folder or s3:// prefix every Dask worker reaches); unset: data/pieces in the state "
        "directory.",
    )
    pushgateway_url: str | None = Field(
        default=None,
        description="Prometheus Pushgateway (http://host:9091) for pipeline metrics; unset: none.",
    )
    result_storage: str | None = Field(
        default=None,
        description="Where finished release steps keep their results, so that an interrupted "
        "release resumes: a Prefect storage block slug (`s3-bucket/conveyor-results`) when "
        "workers run on several hosts; default: home/results.",
    )
    lease_timeout_s: float = Field(
        default=1800.0,
        ge=0,
        description="How long a release waits for another flow holding the model's lease.",
    )
    lease_duration_s: float = Field(
        default=60.0,
        ge=60,
        description="Prefect-server lease on the model: a dead holder's expires after this.",
    )
    triton_startup_timeout_s: float = Field(default=60.0, gt=0)
    triton_load_timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("triton_replicas", mode="before")
    @classmethod
    def _replica_list(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        pairs = [item.strip() for item in text.split(",") if item.strip()]
        if any(p.count("/") != 1 for p in pairs):
            raise ValueError(
                f"CONVEYOR_TRITON_REPLICAS={value!r}: write each replica as http/grpc "
                "(e.g. 10.0.0.5:8000/10.0.0.5:8001), separated by commas"
            )
        return [dict(zip(("http", "grpc"), p.split("/"), strict=True)) for p in pairs]

    @field_validator("triton_backend", mode="after")
    @classmethod
    def _known_rendering(cls, value: str) -> str:
        if value not in RENDERINGS:
            raise ValueError(
                f"CONVEYOR_TRITON_BACKEND={value!r} is not a rendering conveyor has: one of "
                f"{sorted(RENDERINGS)}"
            )
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        # Workers and the Triton process may run with another working directory.
        return value.expanduser().resolve()

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow.db"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def pieces_root(self) -> str:
        """Content-addressed copies of partitioned tables' pieces (`snapshot_root`)."""
        return self.snapshot_root or str(self.data_dir / "pieces")

    @property
    def triton_dir(self) -> Path:
        return self.home / "triton"

    @property
    def results(self) -> str | Path:
        """What Prefect's `result_storage` takes: a block slug, or a local directory."""
        value = self.result_storage
        if value is None:
            return self.home / "results"
        if re.fullmatch(r"[\w-]+/[\w-]+", value):
            return value
        return Path(value).expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.mlflow_db}"

    @property
    def repository(self) -> str:
        if self.model_repository is None:
            return str(self.home / "model_repository")
        if self.model_repository.startswith("s3://"):
            return self.model_repository.rstrip("/")
        return str(Path(self.model_repository).expanduser().resolve())

    @property
    def embedded_triton(self) -> bool:
        """conveyor starts and supervises the one Triton: no external server, no replicas."""
        return self.triton_http_url is None and not self.triton_replicas
