"""fmr_bench — foundation-model-oriented robustness of image classifiers.

Public API::

    import fmr_bench
    result = fmr_bench.evaluate("builtin:digits-cnn", "digits", limit=64)
    result.metrics["fmr"], result.to_pandas()
    fmr_bench.load_results("runs")          # every record under runs/ as one DataFrame
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import FmrSettings
from .errors import FmrBenchError
from .models import ImageClassifier, load_model, wrap_module
from .models.file import save_model
from .results.rundir import FmrResult
from .engine.fmr import evaluate
from .evaluators import run_evaluator
from .results.table import load_results

__all__ = ["evaluate", "run_evaluator", "load_results", "FmrSettings", "FmrResult", "FmrBenchError", "ImageClassifier", "load_model",
           "save_model", "wrap_module", "__version__"]
