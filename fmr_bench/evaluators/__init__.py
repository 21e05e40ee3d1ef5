"""Static robustness evaluators; each module registers one entry in ``EVALUATORS``.

Add an evaluator by writing ``evaluators/NAME.py`` with a registered
``evaluate(ctx, data, ood, **options) -> Output`` and importing it below.
"""

from __future__ import annotations

from ..registry import EVALUATORS
from . import calibration, group_robustness, imagenet_x, ood_accuracy, ood_detection, zero_shot  # noqa: F401
from .base import Context, EvalSettings, Output, StaticResult, evaluate_suite, run_evaluator
from .tasks import TASKS, Task

__all__ = ["EVALUATORS", "TASKS", "Task", "Context", "EvalSettings", "Output", "StaticResult", "evaluate_suite", "run_evaluator"]
