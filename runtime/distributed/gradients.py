"""The gradient all-reduce of DDP as trace spans: one per bucket, with its bytes and group.

DDP reduces gradients in buckets during backward, on its own. To see them in
the trace, the model gets a communication hook (``register_comm_hook``) that
does what DDP's default does (divide by the world size, all-reduce on the
default group, asynchronously) and records an ``allreduce`` span from the
bucket's launch to its completion. The completion callback runs on the
backend's thread; the recorder takes spans from any thread.

(No ``from __future__ import annotations`` here: DDP checks the hook's
annotations as objects.)
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from traces.recorder import Recorder
from traces.schema import Category

ALLREDUCE_TRACK = "allreduce"


def trace_gradient_allreduce(
    ddp_model: Any, recorder: Recorder, step_of: Callable[[], int]
) -> None:
    """Record every gradient bucket's all-reduce of ``ddp_model`` as a span of step ``step_of()``."""

    def hook(state: object, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        tensor = bucket.buffer()
        tensor.div_(dist.get_world_size())
        start, step = recorder.clock(), step_of()
        nbytes = tensor.numel() * tensor.element_size()
        index = bucket.index()
        future = dist.all_reduce(tensor, async_op=True).get_future()

        def finished(done: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
            recorder.add_span(
                "allreduce",
                Category.COLLECTIVE,
                start,
                recorder.clock(),
                step=step,
                nbytes=nbytes,
                detail=f"gradient bucket {index} (group default)",
                track=ALLREDUCE_TRACK,
            )
            return done.value()[0]

        return future.then(finished)

    ddp_model.register_comm_hook(None, hook)
