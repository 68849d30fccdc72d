"""The sections of a model spec that take a version live (promotion and its canary, retention,
serving and its tuning, the smoke test): each a validated pydantic model with the defaults a
spec may leave out. `tasks.core.spec` assembles them into `ModelSpec`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CanarySpec(BaseModel):
    """A canary release: after the smoke test, the edge sends `share` of the model's unversioned
    HTTP requests to the candidate for `bake_s`, and the candidate is judged against the
    champion on that same traffic. Outside a limit it is withdrawn at once."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(default=0.1, gt=0, le=0.5, description="Share of requests, 0-0.5.")
    bake_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="How long the canary serves its share before it is judged, unless its errors "
        "withdraw it sooner.",
    )
    min_requests: int = Field(
        default=100,
        ge=10,
        description="Requests the candidate must answer for a verdict; fewer by the end of the "
        "bake time is no verdict, and the canary is withdrawn.",
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Failed share of the candidate's requests (Triton's statistics), above the "
        "champion's own.",
    )
    max_p99_ratio: float = Field(
        default=1.5, gt=1, description="Candidate p99 / champion p99, on the probe's requests."
    )
    max_prediction_shift: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Kolmogorov-Smirnov distance between the candidate's and the champion's "
        "answers (score, probability of the last class, or prediction) on the probe's requests.",
    )
    probe_clients: int = Field(
        default=2,
        ge=1,
        le=32,
        description="conveyor's own clients sending requests through the edge during the bake.",
    )


class PromotionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requires_approval: bool = Field(
        default=False,
        description="true: the release pauses after its smoke test until a reviewer approves or "
        "rejects it (`conveyor approve`, the Prefect UI).",
    )
    approval_timeout_s: int = Field(
        default=86_400, gt=0, description="No decision within this many seconds is a rejection."
    )
    rollout: Literal["direct", "canary"] = Field(
        default="direct",
        description="direct: the swap moves every request at once; canary: a share first.",
    )
    canary: CanarySpec = Field(
        default_factory=CanarySpec,
        description="With `rollout: canary`: the share, bake time and limits of the canary.",
    )


class RetentionSpec(BaseModel):
    """What the model repository keeps after a promotion: champion, previous and the newest
    `keep_last` versions; older ones lose their files (their MLflow versions stay, tagged
    `conveyor.retired`)."""

    model_config = ConfigDict(extra="forbid")

    keep_last: int = Field(
        default=3,
        ge=0,
        description="Newest versions whose files the repository keeps, besides champion and "
        "previous.",
    )


class TuningSpec(BaseModel):
    """A short measured sweep on the candidate before its smoke test. The best throughput whose
    p99 is within `smoke.p99_budget_ms` at `smoke.concurrency` is the configuration the version
    goes live with."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True, description="false: the version goes live with `serving` as written."
    )
    max_queue_delays_us: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 100, 500],
        min_length=1,
        description="Dynamic batching queue delays tried.",
    )
    instance_counts: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=lambda: [1, 2],
        min_length=1,
        description="Instance counts tried.",
    )
    requests: int = Field(default=1000, ge=50, description="Batch-1 requests per configuration.")


class ServingSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(
        default=256,
        gt=0,
        description="Triton's max_batch_size: the largest batch one request (or a dynamic batch) "
        "may hold.",
    )
    preferred_batch_sizes: list[Annotated[int, Field(gt=0)]] = Field(
        default_factory=list,
        description="Dynamic batching's preferred sizes (each at most `max_batch_size`).",
    )
    max_queue_delay_microseconds: int = Field(
        default=200,
        ge=0,
        description="How long dynamic batching may hold a request to fill a batch; tuning "
        "replaces it with what it measured.",
    )
    instance_count: int = Field(
        default=1,
        gt=0,
        description="Model instances per replica; tuning replaces it with what it measured.",
    )
    kind: Literal["KIND_CPU", "KIND_GPU"] = Field(
        default="KIND_CPU", description="KIND_CPU, or KIND_GPU on GPU workers (production Triton)."
    )
    tuning: TuningSpec = Field(
        default_factory=TuningSpec,
        description="The measured sweep of queue delay and instance count on the candidate.",
    )

    @model_validator(mode="after")
    def _preferred_within_max(self) -> ServingSpec:
        too_big = [s for s in self.preferred_batch_sizes if s > self.max_batch_size]
        if too_big:
            raise ValueError(
                f"preferred_batch_sizes {too_big} exceed max_batch_size {self.max_batch_size}"
            )
        return self


class SmokeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: int = Field(
        default=1000,
        ge=1,
        description="Holdout rows sent to the candidate and compared with the offline ONNX "
        "predictions.",
    )
    latency_requests: int = Field(default=200, ge=10, description="Sequential, batch 1.")
    concurrency: int = Field(default=8, ge=1, description="Clients of the load check.")
    load_requests: int = Field(default=2000, ge=10, description="Batch-1 requests, all clients.")
    p99_budget_ms: float = Field(
        default=50.0, gt=0, description="p99 latency allowed under load at `concurrency`."
    )
    tolerance: float = Field(
        default=1e-5,
        gt=0,
        description="Classifiers: max |Δ probability|; regressors: max |Δ prediction| as a "
        "share of the holdout target's standard deviation (ONNX vs sklearn, served vs offline).",
    )
    swap_probe_clients: int = Field(
        default=2,
        ge=1,
        description="Clients sending unversioned requests while a new version is swapped in.",
    )
