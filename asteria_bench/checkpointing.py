"""Checkpoint and resume of ``asteria-bench run``: what a training job saves, and when.

The runtime saves the model and the optimizer (every tier, the tier map,
pending refreshes, staleness state: ``BlockedOptimizer.state_dict``); this
module adds the training loop's own position — the last finished step, the
batch generator and RNG states, and the trace position — and decides when to
save: every ``--checkpoint-every`` steps, and once more when SIGTERM or Ctrl-C
asks the run to stop (the run stops after the step in flight, writes a
checkpoint, joins its workers, then removes its spill files).
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from runtime.checkpoint import CHECKPOINTS_DIRNAME, CheckpointManager
from traces.recorder import Recorder
from traces.stream import TraceStream


@dataclass
class LoopPosition:
    """The training loop's state: a ``Stateful`` saved beside the model and optimizer.

    ``state_dict`` flushes the trace stream first, so the checkpoint's trace
    position covers every span recorded so far (the optimizer, saved before
    this, has waited for its in-flight refreshes).
    """

    generator: torch.Generator
    recorder: Recorder
    stream: TraceStream | None
    step: int = 0  # the last finished step
    clock_offset_ns: int = 0

    def state_dict(self) -> dict[str, Any]:
        if self.stream is not None:
            self.stream.flush(self.recorder)
        state: dict[str, Any] = {
            "step": self.step,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "trace_chunks": 0 if self.stream is None else self.stream.chunks_written,
            "clock_ns": self.recorder.clock(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda_rng"])
        if self.stream is not None:
            self.stream.rewind(int(state["trace_chunks"]))
        # The trace's clock keeps running forward across the restart.
        behind = int(state["clock_ns"]) - self.recorder.clock()
        self.clock_offset_ns = max(0, behind + 1)


def offset_clock(recorder: Recorder, position: LoopPosition) -> None:
    """Shift ``recorder``'s clock by the resumed run's offset (timestamps never go back)."""
    if position.clock_offset_ns:
        base, offset = recorder.clock, position.clock_offset_ns
        recorder.clock = lambda: base() + offset


@dataclass
class CheckpointPlan:
    """When a run checkpoints and where; ``resume`` loads the newest good checkpoint first."""

    folder: Path
    every: int = 0  # 0: only when asked to stop
    keep: int = 2
    resume: bool = False

    def manager(self, rank: int, world_size: int) -> CheckpointManager:
        return CheckpointManager(self.folder, keep=self.keep, rank=rank, world_size=world_size)


def checkpoint_folder(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS_DIRNAME


@dataclass
class StopRequest:
    """SIGTERM or Ctrl-C, noted so the loop stops cleanly after the step in flight.

    A second signal stops at once (``KeyboardInterrupt``), for a run stuck
    inside a step. Handlers are installed from the main thread only and put
    back by ``restore``.
    """

    signal_name: str | None = None
    _previous: dict[int, Any] = field(default_factory=dict)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def install_sigint(self) -> StopRequest:
        """Ctrl-C only (under torchrun, whose SIGTERM means "the job is being torn down")."""
        if threading.current_thread() is threading.main_thread():
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_signal)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name


class Interrupted(Exception):
    """The run stopped on a signal after writing a checkpoint (or failing to: ``path`` None)."""

    def __init__(self, signal_name: str, step: int, path: Path | None) -> None:
        self.signal_name = signal_name
        self.step = step
        self.path = path
        where = f"checkpoint {path.name}" if path is not None else "no checkpoint could be written"
        super().__init__(f"{signal_name} after step {step}; {where}")
