"""The trace recorder: spans and counters appended from any thread.

A disabled recorder costs one attribute check per call site (``span`` returns a
shared no-op context manager), so instrumentation stays in the code always.
Appends rely on ``list.append`` being atomic under the GIL; no lock is taken on
the hot path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType

from traces.schema import NO_STEP, Category, CounterSample, Span, Tier


class _NullSpan:
    __slots__ = ()

    def __enter__(self) -> _NullSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NULL_SPAN = _NullSpan()


class _OpenSpan:
    __slots__ = (
        "_recorder",
        "block",
        "bytes",
        "category",
        "detail",
        "name",
        "start_ns",
        "step",
        "tier_from",
        "tier_to",
        "track",
    )

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        category: Category,
        step: int,
        block: str | None,
        nbytes: int,
        tier_from: Tier | None,
        tier_to: Tier | None,
        track: str | None,
        detail: str | None,
    ) -> None:
        self._recorder = recorder
        self.name = name
        self.category = category
        self.step = step
        self.block = block
        self.bytes = nbytes
        self.tier_from = tier_from
        self.tier_to = tier_to
        self.track = track
        self.detail = detail
        self.start_ns = 0

    def __enter__(self) -> _OpenSpan:
        self.start_ns = self._recorder.clock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        rec = self._recorder
        rec.spans.append(
            Span(
                name=self.name,
                category=self.category,
                start_ns=self.start_ns,
                end_ns=rec.clock(),
                track=self.track or threading.current_thread().name,
                step=self.step,
                block=self.block,
                bytes=self.bytes,
                tier_from=self.tier_from,
                tier_to=self.tier_to,
                detail=self.detail,
            )
        )


class Recorder:
    """Collects spans and counters of one run (one rank) in memory.

    ``clock`` must be monotonic and return integer nanoseconds; the simulator
    passes its own simulated clock.
    """

    def __init__(
        self, enabled: bool = True, clock: Callable[[], int] = time.perf_counter_ns
    ) -> None:
        self.enabled = enabled
        self.clock = clock
        self.spans: list[Span] = []
        self.counters: list[CounterSample] = []

    def span(
        self,
        name: str,
        category: Category,
        *,
        step: int = NO_STEP,
        block: str | None = None,
        nbytes: int = 0,
        tier_from: Tier | None = None,
        tier_to: Tier | None = None,
        track: str | None = None,
        detail: str | None = None,
    ) -> _OpenSpan | _NullSpan:
        """Time the ``with`` body as one span on the calling thread's track."""
        if not self.enabled:
            return _NULL_SPAN
        return _OpenSpan(
            self, name, category, step, block, nbytes, tier_from, tier_to, track, detail
        )

    def add_span(
        self,
        name: str,
        category: Category,
        start_ns: int,
        end_ns: int,
        *,
        step: int = NO_STEP,
        block: str | None = None,
        nbytes: int = 0,
        tier_from: Tier | None = None,
        tier_to: Tier | None = None,
        track: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Record an interval timed elsewhere (CUDA events, a worker, a simulator)."""
        if not self.enabled:
            return
        if end_ns < start_ns:
            raise ValueError(f"span {name!r} ends before it starts ({start_ns} > {end_ns})")
        self.spans.append(
            Span(
                name=name,
                category=category,
                start_ns=start_ns,
                end_ns=end_ns,
                track=track or threading.current_thread().name,
                step=step,
                block=block,
                bytes=nbytes,
                tier_from=tier_from,
                tier_to=tier_to,
                detail=detail,
            )
        )

    def drain(self) -> tuple[list[Span], list[CounterSample]]:
        """Take every span and counter recorded so far, leaving the recorder empty of them.

        Safe while other threads record: each list is cut at its length when
        read, and anything appended after that stays for the next drain.
        """
        n_spans, n_counters = len(self.spans), len(self.counters)
        spans = self.spans[:n_spans]
        del self.spans[:n_spans]
        counters = self.counters[:n_counters]
        del self.counters[:n_counters]
        return spans, counters

    def counter(
        self,
        name: str,
        value: float,
        *,
        step: int = NO_STEP,
        key: str | None = None,
        time_ns: int | None = None,
    ) -> None:
        if not self.enabled:
            return
        self.counters.append(
            CounterSample(
                name=name,
                time_ns=self.clock() if time_ns is None else time_ns,
                value=float(value),
                step=step,
                key=key,
            )
        )


NULL_RECORDER = Recorder(enabled=False)
"""Shared disabled recorder: the default wherever tracing is optional."""
