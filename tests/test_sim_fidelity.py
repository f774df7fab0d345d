"""Published training throughput: the cases, their sources, and the simulator's error on them."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest

from benchmarks import bench_fidelity
from simulator.fidelity_cases import CASES_FILE, CaseError, load_cases, simulate_case
from simulator.fidelity_fit import fit_efficiency, held_out, model_of
from simulator.llm_step import ComputeEfficiency, compute_efficiency
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
        assert training.collective_interference is not None, name
        for q in (
            training.matmul_efficiency,
            training.attention_efficiency,
            training.memory_efficiency,
            training.collective_interference,
        ):
            assert 0 < q.value <= 1 and any(url in q.source for url in urls), name


def test_the_profiles_meet_the_goal_on_the_published_cases() -> None:
    errors = [abs(simulate_case(c) / c.published_tokens_per_s_per_gpu - 1) for c in CASES]
    assert statistics.median(errors) <= 0.10
    assert max(errors) <= 0.20


def _as_if_measured(cases: list, efficiency: ComputeEfficiency) -> list:
    """The cases with their published figure replaced by the simulator's at ``efficiency``."""
    return [
        dataclasses.replace(c, published_tokens_per_s_per_gpu=simulate_case(c, efficiency))
        for c in cases
    ]


# distinct sequence lengths, micro-batches, recompute and node counts: each number matters
VARIED = [c for c in CASES if model_of(c) in ("mpt-13b", "mpt-3b", "mpt-760m")]


def test_the_fit_recovers_the_efficiencies_that_made_the_figures() -> None:
    truth = ComputeEfficiency(0.65, 0.3, 0.5, 0.4)
    fit = fit_efficiency(_as_if_measured(VARIED, truth))
    got = fit.efficiency
    assert (got.matmul, got.attention, got.memory, got.interference) == pytest.approx(
        (0.65, 0.3, 0.5, 0.4), abs=2e-3
    )
    assert max(abs(e) for e in fit.errors) < 1e-4 and fit.at_bound == ()


def test_held_out_models_are_predicted_by_a_fit_on_the_others() -> None:
    truth = ComputeEfficiency(0.55, 0.25, 0.45, 0.7)
    results = held_out(_as_if_measured(VARIED, truth))
    assert [r.model for r in results] == ["mpt-13b", "mpt-3b", "mpt-760m"]
    for result in results:
        assert all(result.model in c.name for c in result.cases)
        assert max(abs(e) for e in result.errors) < 0.02
    with pytest.raises(ValueError, match="two models"):
        held_out(VARIED[:1])


def test_the_h100_profile_states_the_fit_of_the_cases() -> None:
    """The profile's numbers are what the fit gives on the cases file, to their rounding:
    a case added without refitting fails here."""
    stated = compute_efficiency(load_profile("h100-sxm"))
    fit = fit_efficiency([c for c in CASES if c.hardware == "h100-sxm"], stated).efficiency
    for name in ("matmul", "attention", "memory", "interference"):
        assert getattr(fit, name) == pytest.approx(getattr(stated, name), abs=2e-3), name


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


def test_bench_fidelity_fit_prints_the_fit_and_the_held_out_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = CASES_FILE.read_text(encoding="utf-8").split("[[case]]")
    mpt70 = [b for b in blocks if 'name = "mpt-70b' in b]
    mpt1 = [b for b in blocks if 'name = "mpt-1b 2k' in b]
    cases = tmp_path / "cases.toml"
    cases.write_text("[[case]]".join(["", *mpt70, *mpt1]))
    assert bench_fidelity.main(["--cases", str(cases), "--fit"]) == 0
    out = capsys.readouterr().out
    assert "h100-sxm: fitted on 3 cases: matmul" in out
    assert "each model held out" in out and "h100-sxm: held out, median |error|" in out
    assert "mpt-70b" in out and "mpt-1b" in out


def test_a_bad_case_is_one_line(tmp_path: Path) -> None:
    cases = tmp_path / "cases.toml"
    cases.write_text('[[case]]\nname = "x"\ngpus = "eight"\n')
    with pytest.raises(CaseError, match="case 1: hardware"):
        load_cases(cases)
