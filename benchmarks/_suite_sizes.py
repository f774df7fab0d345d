"""How big each stage of ``gpu_suite.py`` is on a GPU, and in its CPU dry run.

Sizes are data, kept apart from the stages, so that retuning the suite after
its first GPU run (it has never run on one) changes this file only. The GPU
figures are estimates made on a CPU-only machine; each says how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GptSize:
    """The model, batch and optimizer schedule shared by every run of the ``gpu-gpt`` stage."""

    n_layer: int
    n_head: int
    n_embd: int
    context: int
    batch_size: int
    steps: int
    block_size: int
    frequency: int  # precondition frequency f
    workers: int  # refresh workers of the asynchronous runs
    tau: int  # their bounded staleness

    @property
    def parameters(self) -> int:
        """Matrices of the transformer blocks (12 d^2 per layer) plus both embeddings."""
        return 12 * self.n_layer * self.n_embd**2 + (256 + self.context) * self.n_embd

    def args(self) -> list[str]:
        return [
            *("--n-layer", str(self.n_layer), "--n-head", str(self.n_head)),
            *("--n-embd", str(self.n_embd), "--context", str(self.context)),
            *("--batch-size", str(self.batch_size), "--steps", str(self.steps)),
            *("--block-size", str(self.block_size)),
            *("--precondition-frequency", str(self.frequency)),
            # one evaluation, at the last step (it always runs), on one batch
            *("--eval-every", str(10 * self.steps), "--eval-batches", "1"),
        ]

    def describe(self) -> str:
        return (
            f"GPT {self.n_layer} layers, width {self.n_embd}, {self.n_head} heads, context "
            f"{self.context} (~{self.parameters / 1e6:.1f}M parameters); batch {self.batch_size}; "
            f"{self.steps} steps; block size {self.block_size}; f = {self.frequency}; "
            f"asynchronous runs: bounded:{self.tau} with {self.workers} workers"
        )


@dataclass(frozen=True)
class GptRun:
    """One configuration of the ``gpu-gpt`` stage."""

    optimizer: str
    asynchronous: bool = False
    root_device: str = "host"  # where an asynchronous run's refreshes compute
    batched: bool = False  # same-shape blocks stepped as stacks (run --batched)

    @property
    def mode(self) -> str:
        """Runs of one mode take about as long, whichever preconditioned optimizer."""
        if self.optimizer == "adamw":
            return "adamw"
        mode = f"bounded-{self.root_device}" if self.asynchronous else "sync"
        return mode + ("-batched" if self.batched else "")

    @property
    def needs_cuda(self) -> bool:
        return self.asynchronous and self.root_device == "device"

    def name(self, size: GptSize) -> str:
        batched = "-batched" if self.batched else ""
        if not self.asynchronous:
            sync = "" if self.optimizer == "adamw" else "-sync"
            return f"gpt-{self.optimizer}{sync}{batched}"
        return f"gpt-{self.optimizer}-bounded{size.tau}-{self.root_device}{batched}"

    def args(self, size: GptSize) -> list[str]:
        args = ["--optimizer", self.optimizer]
        if self.asynchronous:
            args += ["--staleness", f"bounded:{size.tau}", "--workers", str(size.workers)]
            args += ["--root-device", self.root_device]
        if self.batched:
            args.append("--batched")
        return args


GPT_RUNS = (
    GptRun("adamw"),
    GptRun("soap"),
    GptRun("soap", asynchronous=True, root_device="host"),
    GptRun("soap", asynchronous=True, root_device="device"),
    # the fast path whole: stacked blocks (~0.1 of the operators) and device refreshes
    GptRun("soap", asynchronous=True, root_device="device", batched=True),
    GptRun("kl-shampoo"),
    GptRun("kl-shampoo", asynchronous=True, root_device="host"),
    GptRun("kl-shampoo", asynchronous=True, root_device="device"),
)
"""In this order: AdamW first (every ratio needs it); a run the budget leaves out is named."""


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU suite and its dry run."""

    device: str
    torch_threads: int | None  # None: torch's default
    default_steps: int | None  # None: the README's 300
    gpt: GptSize
    min_gpt_run_s: float  # a gpu-gpt run is not started with less time than this left
    pressure: tuple[str, ...]  # bench_pressure.py options (besides --out)
    step: tuple[str, ...]  # bench_step.py options
    compile: tuple[str, ...]  # bench_step.py options of the torch.compile stage


GPU_GPT = GptSize(
    n_layer=12,
    n_head=12,
    n_embd=768,
    context=512,
    batch_size=8,
    steps=100,
    block_size=1024,
    frequency=10,
    workers=4,
    tau=4,
)
"""~85M parameters. Estimate for an H100/H200 (fp32 throughout, matmul precision
"highest", so ~50 TFLOP/s of FFMA, no tensor cores):

- forward+backward: 6 x 85M x (8 x 512 tokens) = 2.1 TFLOP plus ~0.2 of
  attention, ~50 ms; AdamW's step adds ~2 ms of memory traffic.
- SOAP / KL-Shampoo hot path: 120 blocks of 768 x 1024 (10 per layer) plus two
  embedding blocks; per block ~8 GFLOP (both factor updates, the rotations in
  and out), ~1 TFLOP in all, ~25 ms, plus ~25 ms of launches from Python
  (~2,500 small kernels): a step of ~100 ms.
- refresh: ~244 factors of <= 1024, one QR power-iteration step each, ~6 ms on
  the GPU (~1.5 s per refresh of every block, every f = 10 steps); on the host,
  ~25 ms each with all 16 cores (~6 s per round, so bounded:4 runs wait).
  Step 1 computes every eigenbasis with eigh: ~5 s.
- per run: ~8 s to start (interpreter, torch, CUDA, corpus) and ~5 s to write
  the trace; AdamW ~20 s, sync runs ~35 s, device-refresh runs ~25 s, host-
  refresh runs ~60 s: ~260 s for the seven, hence the stage's 270 s cap. The
  runs the cap leaves out are named in the summary; shorten with fewer steps.
"""

GPU_SIZES = Sizes(
    device="cuda",
    torch_threads=None,
    default_steps=None,
    gpt=GPU_GPT,
    min_gpt_run_s=20.0,
    # The default GPT's state is a few MiB: the budget (AdamW's state) is what
    # stops `device`; 0.02 of an H100/H200 (~1.6-2.8 GiB) caps the allocator as
    # the README shows. 11 runs of 15 steps: ~30 s.
    pressure=("--device", "cuda", "--memory-fraction", "0.02", "--steps", "15", "--rounds", "2"),
    # A third of the gpu-gpt model (4 layers, ~28M parameters) with the presets
    # (SOAP and KL-Shampoo unblocked: 3072 x 3072 factors): hot steps of ~15-30 ms,
    # a refresh of ~0.5-2.5 s per A/B cycle, 5 rounds: ~45 s with warm-up.
    step=(
        *("--device", "cuda", "--n-layer", "4", "--n-head", "12", "--n-embd", "768"),
        *("--context", "512", "--rounds", "5", "--hot-per-round", "3", "--warmup", "2"),
    ),
    # The default GPT, where launches dominate and fusing them is what compile is for;
    # its warm-up compiles SOAP, Shampoo and KL-Shampoo's phases (most of the stage).
    compile=(
        *("--device", "cuda", "--compile", "--no-heavyball"),
        *("--rounds", "5", "--hot-per-round", "5", "--warmup", "3"),
    ),
)

DRY_SIZES = Sizes(
    device="cpu",
    torch_threads=1,  # on a shared 2-core machine two threads stall (see _common.DEFAULT_THREADS)
    default_steps=12,
    gpt=GptSize(
        n_layer=2,
        n_head=2,
        n_embd=64,
        context=32,
        batch_size=4,
        steps=12,
        block_size=1024,
        frequency=4,
        workers=2,
        tau=4,
    ),
    min_gpt_run_s=5.0,
    pressure=("--device", "cpu", "--quick"),
    step=("--quick",),
    compile=("--quick", "--compile", "--no-heavyball"),
)
