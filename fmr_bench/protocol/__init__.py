"""The FMR protocol: the batched loop, its one-image reference, and per-sample outcomes."""

from .loop import LoopConfig, run_batched
from .optim import LatentOptimizer
from .outcome import SampleOutcome
from .reference import reference_one, run_reference

__all__ = ["LatentOptimizer", "LoopConfig", "SampleOutcome", "reference_one", "run_batched", "run_reference"]
