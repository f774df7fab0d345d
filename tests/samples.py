"""Small things several tests build the same way: run metadata, a tiny model's CLI options."""

from __future__ import annotations

from traces.schema import HardwareInfo, RunMetadata, SoftwareInfo

METADATA = RunMetadata(
    run_id="r1",
    kind="measured",
    created_utc="2026-01-01T00:00:00Z",
    hardware=HardwareInfo("cpu", 2, 1, 1 << 30),
    software=SoftwareInfo("3.11", "2.13", "Linux", "0.1.0"),
    optimizer="soap",
    hyperparameters={},
    model={},
    policies={},
    seed=0,
    git_revision=None,
    device="cpu",
)
"""A measured run's metadata with nothing in it but what the schema requires."""

TINY_RUN = (
    "--n-layer",
    "1",
    "--n-embd",
    "32",
    "--n-head",
    "2",
    "--context",
    "16",
    "--batch-size",
    "4",
    "--torch-threads",
    "1",
    "-q",
)
"""``asteria-bench run`` options of a one-layer, 32-wide GPT: a step takes milliseconds."""
