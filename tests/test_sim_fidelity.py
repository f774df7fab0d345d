"""Published training throughput: the cases, their sources, and the simulator's error on them."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from benchmarks import bench_fidelity
from simulator.fidelity_cases import CASES_FILE, CaseError, load_cases, simulate_case
from simulator.llm_step import ComputeEfficiency
from simulator.profiles import list_profiles, load_profile

CASES = load_cases()


def test_every_case_names_its_source_and_table_row() -> None:
    assert len(CASES) >= 10
    for case in CASES:
        assert case.source.startswith("https://") and case.table.strip(), case.name
        assert case.published_tokens_per_s_per_gpu > 0
        assert case.seq_len * case.micro_batch * case.grad_accum > 0
    assert len({c.name for c in CASES}) == len(CASES)


def test_every_profile_states_its_training_efficiencies_with_sources() -> None:
    urls = {c.source for c in CASES}
    for name in list_profiles():
        training = load_profile(name).training
        assert training is not None, name
        for q in (
            training.matmul_efficiency,
            training.attention_efficiency,
            training.memory_efficiency,
        ):
            assert 0 < q.value <= 1 and any(url in q.source for url in urls), name


def test_the_profiles_meet_the_goal_on_the_published_cases() -> None:
    errors = [abs(simulate_case(c) / c.published_tokens_per_s_per_gpu - 1) for c in CASES]
    assert statistics.median(errors) <= 0.10


def test_efficiency_is_what_moves_the_simulated_throughput() -> None:
    case = CASES[0]
    slow = simulate_case(case, ComputeEfficiency(0.3, 0.1, 0.2))
    fast = simulate_case(case, ComputeEfficiency(0.6, 0.2, 0.4))
    assert 1.5 < fast / slow <= 2.0 + 1e-9  # the exposed collectives do not scale


def test_bench_fidelity_prints_every_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = CASES_FILE.read_text(encoding="utf-8")
    first_two = "[[case]]".join(text.split("[[case]]")[:3])
    cases = tmp_path / "cases.toml"
    cases.write_text(first_two)
    assert bench_fidelity.main(["--cases", str(cases), "--sources"]) == 0
    out = capsys.readouterr().out
    assert "2 cases: median |error|" in out and CASES[0].source in out
    for line in out.splitlines():
        assert len(line) <= 100


def test_a_bad_case_is_one_line(tmp_path: Path) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text('[[case]]\nname = "x"\ngpus = "eight"\n')
    with pytest.raises(CaseError, match="case 1: hardware"):
        load_cases(cases)
