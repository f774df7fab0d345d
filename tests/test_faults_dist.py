"""A refresh that fails on its owner is rejected on every rank alike: one version everywhere holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_distributed import check_one_version_everywhere, run_matrix

pytestmark = pytest.mark.slow


def test_a_failed_refresh_is_rejected_on_every_rank(tmp_path: Path) -> None:
    """The owner publishes NaN bytes for a job that raised, so every rank rejects that version."""
    runs = ["soap:replicated:bounded:2+fail", "shampoo:replicated:sync+fail"]
    results = run_matrix(tmp_path, 2, runs, 32)
    check_one_version_everywhere(results)
    for spec, ranks in results.items():
        rejected = [r["rejected"] for r in ranks]
        assert rejected[0] >= 2 and len(set(rejected)) == 1, (spec, rejected)  # one per rank's job
