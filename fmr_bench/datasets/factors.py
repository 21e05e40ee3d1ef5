"""ImageNet-X factors (Idrissi et al. 2022): the names datasets annotate and evaluators score.

Kept on the dataset side so that datasets (e.g. the digits shifts, which carry ImageNet-X
style factor labels) never import an evaluator.
"""

from __future__ import annotations

#: The 16 factors, in the order of ``imagenet_x.FACTORS``.
FACTORS = ["pose", "background", "pattern", "color", "smaller", "shape", "partial_view", "subcategory", "texture",
           "larger", "darker", "object_blocking", "person_blocking", "style", "brighter", "multiple_objects"]
