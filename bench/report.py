"""Render BENCHMARKS.md from the machine-readable results under bench-results/."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return (
        f"{os.cpu_count()} cores of {cpu}, {memory_kb / 2**20:.0f} GiB memory, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def drift_section(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Drift check",
        "",
        "`tasks.drift.check_drift` (what the nightly flow runs) in a fresh process per row:",
        "read the newest batch, sample at most `drift.max_rows` rows per side (seeded, uniform),",
        "score both sides with the champion's ONNX file, Evidently data drift per column +",
        "prediction drift, HTML report to MLflow. Reference: the champion's training split.",
        "Peak memory is the process's maximum RSS, imports (Prefect, MLflow, Evidently) included.",
        "Target at 1,000,000 current rows: 20 s and 2 GB.",
        "",
        "Reproduce: `.venv/bin/python -m bench.drift --unsampled && "
        ".venv/bin/python -m bench.report`",
        "",
        "| current rows | reference rows | compared per side | check (s) | process (s) "
        "| peak RSS (MB) | drift share |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        note = " (no sampling)" if r["unsampled"] else ""
        lines.append(
            f"| {r['current_rows']:,} | {r['reference_rows']:,} | {r['compared_rows']:,}{note} "
            f"| {r['seconds']:.2f} | {r['process_seconds']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['drift_share']:.2f} |"
        )
    for full in (r for r in rows if r["unsampled"]):
        sampled = next(
            r for r in rows if not r["unsampled"] and r["current_rows"] == full["current_rows"]
        )
        worst = max(
            abs(sampled["column_scores"][c] - full["column_scores"][c])
            for c in full["column_scores"]
        )
        prediction = abs(sampled["prediction_score"] - full["prediction_score"])
        same = sampled["drifted_columns"] == full["drifted_columns"]
        lines += [
            "",
            f"Sampled vs the whole {full['current_rows']:,}-row batch, same run: largest "
            f"per-column score difference {worst:.4f}, "
            f"prediction-drift score difference {prediction:.4f} "
            f"(the thresholds are 0.1); drifted columns {'identical' if same else 'DIFFERENT'}; "
            f"check time {sampled['seconds']:.1f} s vs {full['seconds']:.1f} s "
            f"({full['seconds'] / sampled['seconds']:.1f}x).",
        ]
    return lines


def main() -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Machine: {machine()}. Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench`.",
        "This machine is shared and noisy: compare rows of one run, not runs with each other.",
        "",
    ]
    drift = RESULTS / "drift.json"
    if drift.exists():
        lines += drift_section(json.loads(drift.read_text()))
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
