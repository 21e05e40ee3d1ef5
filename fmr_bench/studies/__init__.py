"""The paper's appendix studies, built on :func:`fmr_bench.evaluate`.

One module per study; each has a library function and a command in
:mod:`fmr_bench.cli.commands`:

* :mod:`.export`   — the validated perturbed images of a run as a static ImageFolder
  benchmark (FMR paper App. O), ``fmr export``.
* :mod:`.transfer` — images generated for model A scored by models B, C... (App. D, F, G),
  ``fmr transfer``.
* :mod:`.sweep`    — step-size / budget ablation and per-class tables (App. J,
  Tables 13-14), ``fmr sweep`` and ``fmr per-class``.
* :mod:`.compare`  — PA/FMR of several models under several generators and Kendall τ
  between the generators' rankings (§4.5, Table 3), ``fmr compare-generators``.
"""
