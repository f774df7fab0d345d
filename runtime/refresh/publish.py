"""How a refresh result reaches the ranks that install it.

A publisher takes the job and, on the rank that computed it, the handle of its
result, and returns the handle the install queue waits on. Keeping this apart
from the executor (who computes) and the install queue (when it is installed)
is what lets distribution add a publisher without touching either.

``LocalPublisher`` is the single-process case: every job is computed here and
its result is used as it is.
"""

from __future__ import annotations

from typing import Protocol

from runtime.refresh.executors import RefreshJob, ResultHandle


class Publisher(Protocol):
    """Moves results from their owner to the ranks that use them."""

    def owns(self, block: str) -> bool:
        """Whether this rank computes the block's refreshes."""
        ...

    def publish(self, job: RefreshJob, computed: ResultHandle | None) -> ResultHandle:
        """The handle this rank installs from; ``computed`` is None where it does not own the block."""
        ...

    def at_step(self, t: int) -> None:
        """Called at the start of the optimizer step that makes update ``t``, on every rank."""
        ...

    def close(self) -> None: ...


class LocalPublisher:
    """One process: this rank owns every block and installs what it computed."""

    def owns(self, block: str) -> bool:
        return True

    def publish(self, job: RefreshJob, computed: ResultHandle | None) -> ResultHandle:
        if computed is None:
            raise ValueError(f"block {job.block}: a local publisher needs the computed result")
        return computed

    def at_step(self, t: int) -> None:
        return None

    def close(self) -> None:
        return None
