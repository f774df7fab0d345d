"""The training workload every benchmark runs: a small byte-level GPT and its data.

The workload is fixed so that runs differ only in what is under test (optimizer,
placement and staleness policies, hardware). The corpus is synthetic and
generated from a seed, byte-identical everywhere, with structure at every range
a 64-128 byte context can exploit; held-out loss is measured on a fixed set of
validation batches, so losses are comparable across runs and optimizers.

``model`` holds the GPT, ``corpus`` the generator, ``data`` file loading,
train/validation splitting and batching.
"""

from asteria_bench.workload.corpus import (
    DEFAULT_CORPUS_BYTES,
    DEFAULT_CORPUS_SEED,
    corpus_digest,
    generate_corpus,
)
from asteria_bench.workload.data import ByteDataset, DataError, default_dataset, load_text
from asteria_bench.workload.model import GPT, GPTConfig

__all__ = [
    "DEFAULT_CORPUS_BYTES",
    "DEFAULT_CORPUS_SEED",
    "GPT",
    "ByteDataset",
    "DataError",
    "GPTConfig",
    "corpus_digest",
    "default_dataset",
    "generate_corpus",
    "load_text",
]
