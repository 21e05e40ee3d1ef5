"""Shards on one machine: the digits FMR run as 1 process x 2 threads against 2 shards x 1 thread at once.

    python benchmarks/bench_shards.py [--limit 360] [--budget 50] [--repeats 1] [--keep DIR]

Each mode runs ``python -m fmr_bench evaluate --model builtin:digits-cnn`` (shipped digits
weights, CPU) in fresh processes: mode ``single`` one process with 2 threads, mode
``shards`` two processes with 1 thread each (``--shard 0/2`` and ``--shard 1/2``) started
together, then ``fmr merge``. Prints wall time (process start to the last record), loop time
(from the run folder's settings.json, written once the models are loaded, to the last
record),
samples/s of each, the throughput ratio, and whether the merged run has the single run's
metrics and per-sample decisions. Measure on an idle machine: with other jobs running, the
ratio says more about the scheduler than about sharding (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's fmr_bench, as the subprocesses get it


def _command(out: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fmr_bench", "evaluate", "--model", "builtin:digits-cnn", "--limit",
            str(args.limit), "--budget", str(args.budget), "--device", "cpu", "--no-grid", "--quiet",
            "--out", str(out), *extra]


def _env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _loop_seconds(folders: list[Path]) -> float:
    """From the first ``settings.json`` written (models loaded, the loop starts) to the last record written."""
    starts = [(f / "settings.json").stat().st_mtime for f in folders]
    ends = [(f / "record.json").stat().st_mtime for f in folders]
    return max(ends) - min(starts)


def _run_all(commands: list[list[str]], threads: int) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=REPO, env=_env(threads), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for c in commands]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            sys.exit(f"failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")
    return time.perf_counter() - t0


def measure(root: Path, args: argparse.Namespace, repeat: int) -> dict:
    from fmr_bench.results.rundir import FmrResult
    from fmr_bench.results.shards import merge_folders

    single_out, shard_out = root / f"single-{repeat}", root / f"shards-{repeat}"
    wall_single = _run_all([_command(single_out, args)], threads=2)
    run = next(single_out.iterdir())
    single = FmrResult.load(run)
    wall_shards = _run_all([_command(shard_out, args, "--shard", f"{i}/2") for i in range(2)], threads=1)
    shard_run = next(shard_out.iterdir())
    loop_shards = _loop_seconds([shard_run / "shard-0-of-2", shard_run / "shard-1-of-2"])
    merge_folders([shard_run])
    merged = FmrResult.load(shard_run)
    by_id = {o.id: o for o in merged.outcomes}
    n = single.record["metrics"]["n"]
    loop_single = _loop_seconds([run])
    return {
        "n": n, "budget": args.budget,
        "single": {"wall_s": round(wall_single, 2), "loop_s": round(loop_single, 2),
                   "samples_per_s": round(n / loop_single, 3)},
        "shards": {"wall_s": round(wall_shards, 2), "loop_s": round(loop_shards, 2),
                   "samples_per_s": round(n / loop_shards, 3)},
        "throughput_ratio_loop": round(loop_single / loop_shards, 3),
        "throughput_ratio_wall": round(wall_single / wall_shards, 3),
        "metrics_identical": merged.record["metrics"] == single.record["metrics"]
        and merged.record["per_class"] == single.record["per_class"],
        "decisions_identical": sorted(by_id) == sorted(o.id for o in single.outcomes)
        and all(by_id[o.id].key() == o.key() for o in single.outcomes),
        "max_oracle_conf_diff": max((abs(by_id[o.id].oracle_conf - o.oracle_conf) for o in single.outcomes
                                     if o.oracle_conf is not None), default=0.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=360, help="digits test images (a seeded subset; 360 in all)")
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--keep", default=None, help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("FMR_CACHE", tempfile.mkdtemp(prefix="fmr-bench-cache-"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        rows = [measure(root, args, r) for r in range(args.repeats)]
    for r in rows:
        print(json.dumps(r))
    print("| mode | wall s | loop s | samples/s (loop) |\n|---|---:|---:|---:|")
    for r in rows:
        for mode, label in (("single", "1 process x 2 threads"), ("shards", "2 shards x 1 thread")):
            m = r[mode]
            print(f"| {label} | {m['wall_s']} | {m['loop_s']} | {m['samples_per_s']} |")
        print(f"throughput ratio (shards / single): loop {r['throughput_ratio_loop']}x, wall "
              f"{r['throughput_ratio_wall']}x; metrics identical: {r['metrics_identical']}; decisions identical: "
              f"{r['decisions_identical']}; max |oracle p(y) difference|: {r['max_oracle_conf_diff']:.2e}")


if __name__ == "__main__":
    main()
