"""Checkpoints: structure kept exactly, written atomically, checked on load, never unpickled."""

from __future__ import annotations

import copy
import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tiers import OPTIMIZERS  # the same optimizers and settings as the tier tests

from runtime import ExecutionConfig
from runtime.checkpoint import CheckpointError, CheckpointManager, StateError
from runtime.checkpoint.flatten import flatten, unflatten
from runtime.checkpoint.manager import MANIFEST, _checksum
from runtime.checkpoint.safe_reader import UnsafeCheckpoint, load_index
from runtime.policies.placement import parse_placement
from runtime.policies.staleness import Adaptive, Bounded, Sync
from traces.recorder import Recorder


class Box:
    """A ``Stateful`` holding a state dict as it is."""

    def __init__(self, state: Any = None) -> None:
        self.state = state

    def state_dict(self) -> Any:
        return self.state

    def load_state_dict(self, state: Any) -> None:
        self.state = state


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types, tensors bitwise (dtype and shape included), NaN == NaN."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


tensors = st.builds(
    lambda shape, dtype, seed: (
        torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 100
    ).to(dtype),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.uint8]),
    st.integers(0, 2**16),
)
leaves = (
    st.none() | st.booleans() | st.integers(-(2**62), 2**62) | st.floats() | st.text() | tensors
)
states = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(states)
def test_flatten_then_unflatten_gives_back_the_same_state(state: Any) -> None:
    skeleton, found = flatten(state, "x/")
    assert all(k.startswith("x/") for k in found)
    back = unflatten(json.loads(json.dumps(skeleton)), found)
    assert same(state, back)


@pytest.mark.parametrize("bad", [{1, 2}, object(), {(1, 2): 3}, torch.float32])
def test_what_a_checkpoint_cannot_store_without_pickle_is_refused_by_name(bad: Any) -> None:
    with pytest.raises(StateError, match="opt/"):
        flatten({"a": [bad]}, "opt/")


def sample_state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(5, 3, generator=g),
        0: {"step": seed, "betas": (0.9, 0.95), "eps": float("nan")},
        "rng": g.get_state(),
    }


def test_save_and_load_round_trip_keeping_the_last_k(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    for step in (1, 2, 3):
        info = manager.save(step, {"a": Box(sample_state(step)), "b": Box([step])}, {"b"})
        assert info is not None and info.path.name == f"step-{step:08d}"
    assert [c.step for c in manager.checkpoints()] == [3, 2]
    assert not list((tmp_path / "checkpoints").glob("*.partial"))
    a, b = Box(), Box()
    info = manager.load_latest({"a": a, "b": b})
    assert info is not None and info.step == 3
    assert same(a.state, sample_state(3)) and b.state == [3]


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_names_the_file_and_the_previous_one_loads(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2):
        manager.save(step, {"a": Box(sample_state(step))})
    damaged = next((tmp_path / "step-00000002").glob("*.distcp"))
    _damage(damaged)
    box = Box()
    with pytest.warns(UserWarning, match=f"{damaged}: checksum mismatch"):
        info = manager.load_latest({"a": box})
    assert info is not None and info.step == 1 and same(box.state, sample_state(1))
    _damage(next((tmp_path / "step-00000001").glob("*.distcp")))
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="checksum mismatch"):
        manager.load_latest({"a": Box()})


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(1, {"a": Box(sample_state(1))})
    real = CheckpointManager._save_tensors

    def fills_the_disk(self: CheckpointManager, tensors: Any, folder: Path) -> None:
        real(self, tensors, folder)  # the data is written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CheckpointManager, "_save_tensors", fills_the_disk)
    with pytest.warns(
        UserWarning,
        match=r"step 2 not written \(No space left on device\); step-00000001 still stands",
    ):
        assert manager.save(2, {"a": Box(sample_state(2))}) is None
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]
    box = Box()
    assert manager.load_latest({"a": box}) is not None and same(box.state, sample_state(1))


class Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("unpickled!",))


def test_a_crafted_index_is_refused_without_running_it(tmp_path: Path, capsys: Any) -> None:
    manager = CheckpointManager(tmp_path)
    info = manager.save(1, {"a": Box(sample_state(1))})
    assert info is not None
    index = info.path / ".metadata"
    index.write_bytes(pickle.dumps(Boom()))
    manifest = json.loads((info.path / MANIFEST).read_text())
    manifest["files"][".metadata"] = {"bytes": index.stat().st_size, "xxh3_64": _checksum(index)}
    (info.path / MANIFEST).write_text(json.dumps(manifest))  # an attacker fixes the checksum too
    with (
        pytest.warns(UserWarning),
        pytest.raises(CheckpointError, match=r"\.metadata.*builtins\.print.*not allowed"),
    ):
        manager.load_latest({"a": Box()})
    assert "unpickled!" not in capsys.readouterr().out
    with pytest.raises(UnsafeCheckpoint):
        load_index(b"\x80\x04garbage")


def test_a_checkpoint_of_another_world_size_is_refused(tmp_path: Path) -> None:
    CheckpointManager(tmp_path).save(1, {"a": Box([1])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="written by 1 ranks, this run has 2"):
            CheckpointManager(tmp_path, world_size=2).verify(
                CheckpointManager(tmp_path).checkpoints()[0]
            )


# ---------------------------------------------------------------- optimizers


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Tanh(), torch.nn.Linear(20, 4))


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer, g: torch.Generator, n: int) -> None:
    for _ in range(n):
        x, y = torch.randn(32, 12, generator=g), torch.randn(32, 4, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _execution(spill: Any, staleness: Any, placement: str = "pressure:1:2") -> ExecutionConfig:
    """``pressure:1:2`` with these budgets presses every slot down to NVMe."""
    tiered = placement != "device"
    return ExecutionConfig(
        placement=parse_placement(placement) if tiered else None,
        device_budget_bytes=8000 if tiered else None,
        host_budget_bytes=8000 if tiered else None,
        spill=spill if tiered else None,
        staleness=staleness,
        workers=1,
        recorder=Recorder(),
    )


PLACEMENTS = ["device", "lifecycle", "pressure:1:2"]
STALENESS = {"sync": Sync, "bounded": lambda: Bounded(2)}


@pytest.mark.parametrize("staleness", sorted(STALENESS))
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_checkpoint_holds_every_tier_and_resumes_bitwise(
    name: str, placement: str, staleness: str, tmp_path: Path
) -> None:
    """Saved mid-run (state on its tiers, refreshes in flight), loaded into a fresh optimizer.

    Every optimizer x placement x staleness policy; adaptive staleness, whose
    choices follow measured times, is resumed against a replay of its choices
    in ``tests/test_resume.py``.
    """
    from runtime.spill import SpillStore

    cls, kwargs = OPTIMIZERS[name]
    spills = []
    for i in range(2):
        (tmp_path / f"s{i}").mkdir()
        spills.append(SpillStore(tmp_path / f"s{i}"))
    model = _model()
    g = torch.Generator().manual_seed(1)
    policy = STALENESS[staleness]
    opt = cls(model.parameters(), **kwargs, execution=_execution(spills[0], policy(), placement))
    try:
        _steps(model, opt, g, 7)
        manager = CheckpointManager(tmp_path / "ck")
        manager.save(7, {"model": model, "optimizer": opt, "data": Box({"g": g.get_state()})})
        tiers = opt.state_dict()["tiers"]
        if placement.startswith("pressure"):
            assert "nvme" in {t for slots in tiers.values() for t in slots.values()}
        _steps(model, opt, g, 5)
        reference = [p.detach().clone() for p in model.parameters()]
    finally:
        opt.close()
    model2 = _model()
    torch.manual_seed(123)  # nothing of the fresh run's own init may survive the load
    opt2 = cls(model2.parameters(), **kwargs, execution=_execution(spills[1], policy(), placement))
    data = Box()
    try:
        manager.load_latest({"model": model2, "optimizer": opt2, "data": data})
        assert opt2.store.tier_map() == tiers  # every slot back on its tier
        g2 = torch.Generator()
        g2.set_state(data.state["g"])
        _steps(model2, opt2, g2, 5)
    finally:
        opt2.close()
        for spill in spills:
            spill.close()
    for a, b in zip(reference, model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_loading_into_a_live_optimizer_never_reads_its_stale_spill_files(tmp_path: Path) -> None:
    from runtime.spill import SpillStore

    cls, kwargs = OPTIMIZERS["soap"]
    spill = SpillStore(tmp_path)
    model = _model()
    g = torch.Generator().manual_seed(1)
    opt = cls(model.parameters(), **kwargs, execution=_execution(spill, Bounded(2)))
    try:
        _steps(model, opt, g, 4)
        saved = copy.deepcopy(opt.state_dict())  # as written to disk, not live references
        params = [p.detach().clone() for p in model.parameters()]
        g_state = g.get_state()
        _steps(model, opt, g, 3)
        reference = [p.detach().clone() for p in model.parameters()]
        files_before = len(spill)
        for p, saved_p in zip(model.parameters(), params, strict=True):
            p.data.copy_(saved_p)
        _steps(model, opt, g, 2)  # the live state moves on, its spill files rewritten
        for p, saved_p in zip(model.parameters(), params, strict=True):
            p.data.copy_(saved_p)
        opt.load_state_dict(saved)
        assert len(spill) == files_before  # the old files were removed, the saved ones written
        g.set_state(g_state)
        _steps(model, opt, g, 3)
    finally:
        opt.close()
        spill.close()
    for a, b in zip(reference, model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_adaptive_staleness_state_survives_a_checkpoint() -> None:
    policy = Adaptive(4)
    policy.observe("b0", 3_000_000, 1_000_000.0)
    first = [policy.install_step("b0", v, 1) for v in (1, 2)]
    restored = Adaptive(4)
    restored.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    assert restored.choices == policy.choices
    assert [restored.install_step("b0", v, 1) for v in (1, 2, 3)] == [
        *first,
        policy.install_step("b0", 3, 1),
    ]
    with pytest.raises(ValueError, match="tau_max 4, this run 3"):
        Adaptive(3).load_state_dict(policy.state_dict())


# ------------------------------------------------------------------ fuzzing


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    CheckpointManager(root).save(1, {"a": Box(sample_state(1)), "b": Box({"n": [1, 2.5]})})
    return root


@settings(max_examples=150, deadline=None)
@given(
    which=st.sampled_from(["state-rank00000.json", ".metadata", "manifest.json", "distcp"]),
    cut=st.integers(0, 4096),
    junk=st.binary(max_size=64),
    reseal=st.booleans(),
)
def test_a_damaged_checkpoint_loads_or_raises_one_checkpoint_error(
    pristine: Path,
    tmp_path_factory: pytest.TempPathFactory,
    which: str,
    cut: int,
    junk: bytes,
    reseal: bool,
) -> None:
    """Whatever a file holds (resealed, as an attacker would, or not): a load or a CheckpointError."""
    import shutil

    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(pristine, root, dirs_exist_ok=True)
    folder = root / "step-00000001"
    target = next(folder.glob("*.distcp")) if which == "distcp" else folder / which
    data = target.read_bytes()
    target.write_bytes(data[: cut % (len(data) + 1)] + junk)
    if reseal and which != "manifest.json":
        manifest = json.loads((folder / MANIFEST).read_text())
        name = target.name
        manifest["files"][name] = {"bytes": target.stat().st_size, "xxh3_64": _checksum(target)}
        (folder / MANIFEST).write_text(json.dumps(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            CheckpointManager(root).load_latest({"a": Box(), "b": Box()})
        except CheckpointError as exc:
            assert str(exc).startswith(str(root)), exc
