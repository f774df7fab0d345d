"""Independent float64 references for the three optimizers, written from ALGORITHMS.md.

Slow, plain loops over blocks; they never import ``runtime`` so that a shared
misreading of the spec cannot hide in both. Each class takes the same
hyperparameters as its ``runtime`` counterpart and offers
``step(grads, lr=None)`` (``lr`` overrides the learning rate for that call, as
a scheduler would) and ``block_state(block_id)``.
"""

from .adamw_ref import AdamWReference, AdamWState, adamw_step
from .adapter import ReferenceOptimizer
from .kl_shampoo_ref import KLShampooReference
from .shampoo_ref import ShampooReference, invroot
from .soap_ref import SOAPReference

__all__ = [
    "AdamWReference",
    "AdamWState",
    "KLShampooReference",
    "ReferenceOptimizer",
    "SOAPReference",
    "ShampooReference",
    "adamw_step",
    "invroot",
]
