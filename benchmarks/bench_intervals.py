"""Cost of the interval kernels at 50k samples (1000 resamples): an FMR record's intervals, ECE, AUROC/FPR@95.

Run: ``python benchmarks/bench_intervals.py [N]``. Prints seconds per kernel; not a test.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from fmr_bench.metrics import intervals as I


def main(n: int = 50_000) -> None:
    rng = np.random.default_rng(0)
    x = I.fmr_indicators(rng.random(n) < .9, rng.random(n) < .7, rng.random(n) < .6, rng.random(n) < .95,
                         rng.integers(0, 10, n))
    s = I.IntervalSettings()
    I.clopper_pearson(1, 2)  # scipy.stats imported before the clock starts (about 0.5 s, once per process)
    for name, fn in (
            ("fmr record (binomial + pattern bootstrap)", lambda: I.fmr_intervals(x, s)),
            ("paired compare", lambda: I.paired_difference(x, x[::-1], lambda sums: I.fmr_from_sums(sums, n), s)),
            ("ece", lambda: I.ece_interval(rng.random(n), rng.random(n) < .5, s, s.rng())),
            ("auroc + fpr@95 (n ID, n/5 OOD)", lambda: I.detection_intervals(rng.normal(1, 1, n),
                                                                             rng.normal(0, 1, n // 5), s, s.rng()))):
        start = time.perf_counter()
        fn()
        print(f"{name:45s} n={n}: {time.perf_counter() - start:.3f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)
