"""Audit the digits world: does each validated perturbed image still show its class?

Runs the main FMR job (``fmr_bench.evaluate``) for each shipped digits model, captures
every validated final image x-hat with ``sample_hook``, and asks the independent judge
(``builtin:digits-judge`` by default) what it sees. Prints, per model:

- SA, VR, PA, FMR: the protocol's own figures;
- validity: share of validated x-hat the judge still labels y (the oracle's trustworthiness);
- audited PA / FMR: PA over the validated samples the judge confirms, and 100 * that / SA;
- fooled-agree: among validated x-hat the model gets wrong, the share where the judge
  agrees with the model's wrong label (the image has changed class: not the model's fault).

Variants of the world are options: ``--oracle`` (any oracle spec, ``+`` ensembles),
``--accept`` (acceptance rule, as ``fmr evaluate --accept``: ``argmax``, ``confidence:T``,
``margin:T``, ``all-agree``, ``RULE+RULE``), ``--step-size``, ``--budget``; each defaults to
the digits world's. Run folders are not written (``out=None``): the audit is a
measurement, repeatable from its command.

Usage::

    python scripts/audit_digits_world.py --limit 120
    python scripts/audit_digits_world.py --limit 120 --accept argmax --json audit.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_digits_world.py: spinning OpenMP workers

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

from fmr_bench.digits.audit import AuditTally

MODELS = ("builtin:digits-cnn", "builtin:digits-cnn-aug", "builtin:digits-mlp")


def audit_model(model: str, *, oracle: str | None, accept: str | None, judge: str, limit: int | None,
                step_size: float | None, budget: int, seed: int) -> dict:
    """One FMR run of ``model`` on digits:test, audited by ``judge``; returns a row of figures."""
    import fmr_bench
    from fmr_bench.datasets import load_dataset
    from fmr_bench.models import load_model

    data = load_dataset("digits:test")
    ora_spec = oracle or data.world.oracle
    judge_clf = load_model(judge, class_names=data.class_names).freeze()
    tally = AuditTally()

    def hook(outcome, clean, final, latent) -> None:
        with torch.no_grad():
            verdict = int(judge_clf(final[None].float()).argmax(-1)) if outcome.validated else None
        tally.add(outcome, verdict)

    overrides = {k: v for k, v in (("step_size", step_size), ("accept", accept)) if v is not None}
    t0 = time.time()
    res = fmr_bench.evaluate(model, data, oracle=ora_spec, out=None, limit=limit, budget=budget, seed=seed,
                             device="cpu", sample_hook=hook, **overrides)
    m = res.metrics
    row = {"model": model, "oracle": ora_spec, "accept": res.record["settings"]["accept"], "judge": judge,
           "step_size": res.record["settings"]["step_size"], "budget": budget, "limit": limit, "seed": seed,
           **{k: m[k] for k in ("n", "sa", "vr", "pa", "fmr", "mean_steps")}, **tally.metrics(sa=m["sa"]),
           "seconds": round(time.time() - t0, 1)}
    return row


def fmt(v) -> str:
    return "–" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model specs")
    parser.add_argument("--oracle", default=None, help="oracle spec (default: the digits world's)")
    parser.add_argument("--accept", default=None, help="acceptance rule (default: the digits world's)")
    parser.add_argument("--judge", default="builtin:digits-judge", help="the independent judge (a model spec)")
    parser.add_argument("--limit", type=int, default=120, help="images of digits:test (seeded subset)")
    parser.add_argument("--step-size", type=float, default=None, help="default: the digits world's")
    parser.add_argument("--budget", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per model here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fmr_bench.errors import FmrBenchError

    cols = ("model", "sa", "vr", "pa", "fmr", "validity", "audited_pa", "audited_fmr", "fooled_agree", "n_validated")
    print(f"oracle {args.oracle or '(world default)'}  accept {args.accept or '(world default)'}  "
          f"judge {args.judge}  step {args.step_size or '(world default)'}  B {args.budget}  limit {args.limit}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for model in args.models.split(","):
        try:
            row = audit_model(model, oracle=args.oracle, accept=args.accept, judge=args.judge,
                              limit=args.limit, step_size=args.step_size, budget=args.budget, seed=args.seed)
        except FmrBenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("| " + " | ".join(fmt(row[c]) for c in cols) + " |", flush=True)
        if args.json is not None:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
