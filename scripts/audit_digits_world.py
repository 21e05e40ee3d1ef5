"""Audit the digits world: does each validated perturbed image still show its class?

Runs the main FMR job (``fmr_bench.evaluate(..., audit=JUDGE)``, i.e. ``fmr evaluate --audit``)
for each shipped digits model; the independent judge (``builtin:digits-judge`` by default)
labels every validated final image x-hat. Prints, per model:

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

``--sweep RULE,RULE,...`` compares acceptance rules cheaply: every rule stricter than the
paper's argmax stops a sample on the same latent trajectory, only earlier (the oracle
never changes the steps). So each model's trajectories are traced once for the whole
budget without stopping, recording at every step the oracle members' probabilities, the
model's and the judge's labels; each rule is then replayed on the trace with the
protocol's own decision function (:func:`fmr_bench.oracles.acceptance.parse_rule`). For
``argmax`` the replay gives the figures of the real run.

Usage::

    python scripts/audit_digits_world.py --limit 120
    python scripts/audit_digits_world.py --limit 120 --accept argmax --json audit.jsonl
    python scripts/audit_digits_world.py --limit 120 --sweep argmax,margin:0.9,margin:0.99,confidence:0.99
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

from fmr_bench.metrics.fmr import audit_counts

MODELS = ("builtin:digits-cnn", "builtin:digits-cnn-aug", "builtin:digits-mlp")


def audit_model(model: str, *, oracle: str | None, accept: str | None, judge: str, limit: int | None,
                step_size: float | None, budget: int, seed: int) -> dict:
    """One FMR run of ``model`` on digits:test, audited by ``judge``; returns a row of figures."""
    import fmr_bench
    from fmr_bench.datasets import load_dataset

    data = load_dataset("digits:test")
    ora_spec = oracle or data.world.oracle
    overrides = {k: v for k, v in (("step_size", step_size), ("accept", accept)) if v is not None}
    t0 = time.time()
    res = fmr_bench.evaluate(model, data, oracle=ora_spec, audit=judge, out=None, limit=limit, budget=budget,
                             seed=seed, device="cpu", **overrides)
    m = res.metrics
    verdicts = [(o, o.verdict(judge)) for o in res.outcomes if o.validated]
    row = {"model": model, "oracle": ora_spec, "accept": res.record["settings"]["accept"], "judge": judge,
           "step_size": res.record["settings"]["step_size"], "budget": budget, "limit": limit, "seed": seed,
           **{k: m[k] for k in ("n", "n_validated", "sa", "vr", "pa", "fmr", "mean_steps", "audit_validity",
                                "audit_pa", "audit_fmr")},
           "fooled_agree": fooled_agree((o.final_pred, o.label, v["pred"]) for o, v in verdicts),
           "seconds": round(time.time() - t0, 1)}
    return row


@torch.no_grad()
def _probs(oracle, img: torch.Tensor) -> torch.Tensor:
    return torch.stack([m(img).float().softmax(-1) for m in oracle.members])


def trace_model(model: str, *, oracle: str | None, judge: str, limit: int | None, step_size: float | None,
                budget: int, seed: int) -> dict[str, torch.Tensor]:
    """Run ``budget`` latent steps on every selected image without stopping; record each step.

    Returns:
        ``labels`` (N,), ``clean`` (N,) the model's clean predictions, and per step
        t = 0..budget (t = 0 is the reconstruction): ``probs`` (T+1, M, N, C) of the oracle's
        members, ``model`` and ``judge`` (T+1, N) labels.
    """
    import torch.nn.functional as F

    from fmr_bench.datasets import load_dataset
    from fmr_bench.generators import load_generator
    from fmr_bench.models import load_model
    from fmr_bench.oracles import load_oracle
    from fmr_bench.protocol.loop import exact_fp32
    from fmr_bench.protocol.optim import LatentOptimizer
    from fmr_bench.engine.fmr import select_indices

    data = load_dataset("digits:test")
    idx = select_indices(len(data), limit, seed)
    x = torch.stack([data.load(i) for i in idx])
    labels = torch.tensor([data.labels[i] for i in idx])
    clf = load_model(model, class_names=data.class_names).freeze()
    gen = load_generator(data.world.generator, seed=seed).freeze()
    ora = load_oracle(oracle or data.world.oracle, data.class_names).eval()
    judge_clf = load_model(judge, class_names=data.class_names).freeze()
    opt = LatentOptimizer("adam", step_size or data.world.step_size)
    probs, preds, verdicts = [], [], []
    with exact_fp32():
        with torch.no_grad():
            clean = clf(x).argmax(-1)
            z = gen.encode(x).float()
        state = opt.init_state(z)
        for t in range(budget + 1):
            zt = z.detach().requires_grad_(True)
            img = gen.decode(zt)
            logits = clf(img)
            with torch.no_grad():
                probs.append(_probs(ora, img.detach()))
                preds.append(logits.argmax(-1))
                verdicts.append(judge_clf(img.detach()).argmax(-1))
            if t == budget:
                break
            (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), labels, reduction="sum"), zt)
            z = gen.post_step(opt.step(z.detach(), grad, state), torch.tensor(idx), state["t"].cpu())
    return {"labels": labels, "clean": clean, "probs": torch.stack(probs), "model": torch.stack(preds),
            "judge": torch.stack(verdicts)}


def replay(trace: dict[str, torch.Tensor], rule: str) -> dict:
    """The figures a run under ``rule`` would give on a traced trajectory set."""
    from fmr_bench.metrics.fmr import fmr_metrics
    from fmr_bench.oracles.acceptance import parse_rule
    from fmr_bench.protocol.outcome import SampleOutcome

    r = parse_rule(rule)
    labels, probs = trace["labels"], trace["probs"]
    ok = torch.stack([r.accepts(probs[t], labels) for t in range(len(probs))])  # (T+1, N)
    outcomes, judged = [], []
    for i, y in enumerate(labels.tolist()):
        clean = int(trace["clean"][i])
        steps = 0
        while steps + 1 < len(ok) and ok[steps + 1, i]:
            steps += 1
        o = SampleOutcome(id=str(i), index=i, label=y, target=y, clean_pred=clean,
                          oracle_clean=int(probs[0, :, i].mean(0).argmax()), validated=steps > 0, steps=steps,
                          final_pred=int(trace["model"][steps, i]) if steps else clean)
        outcomes.append(o)
        judged.append(int(trace["judge"][steps, i]) if steps else None)
    m = fmr_metrics(outcomes)
    audit = audit_counts((o.clean_correct, o.validated, o.final_correct, None if v is None else v == o.label)
                         for o, v in zip(outcomes, judged))
    return {"accept": r.spec, **{k: m[k] for k in ("n", "n_validated", "sa", "vr", "pa", "fmr", "mean_steps")},
            **{k: audit[k] for k in ("audit_validity", "audit_pa", "audit_fmr")},
            "fooled_agree": fooled_agree((o.final_pred, o.label, v) for o, v in zip(outcomes, judged) if v is not None)}


def fooled_agree(rows) -> float | None:
    """Among validated x-hat the model gets wrong, % where the judge gives the model's label.

    Args:
        rows: (model's label of x-hat, true label, judge's label of x-hat) per validated
            sample; the digits models' outputs are the dataset labels.
    """
    wrong = [(pred, judge) for pred, label, judge in rows if pred != label]
    return 100.0 * sum(pred == judge for pred, judge in wrong) / len(wrong) if wrong else None


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
    parser.add_argument("--sweep", default=None, help="comma-separated rules to replay on traced trajectories")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fmr_bench.errors import FmrBenchError

    cols = ("model", "sa", "vr", "pa", "fmr", "audit_validity", "audit_pa", "audit_fmr", "fooled_agree", "n_validated")
    print(f"oracle {args.oracle or '(world default)'}  accept {args.accept or '(world default)'}  "
          f"judge {args.judge}  step {args.step_size or '(world default)'}  B {args.budget}  limit {args.limit}")
    if args.sweep:
        cols = ("accept",) + cols
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for model in args.models.split(","):
        if args.sweep:
            try:
                trace = trace_model(model, oracle=args.oracle, judge=args.judge, limit=args.limit,
                                    step_size=args.step_size, budget=args.budget, seed=args.seed)
                rows = [{"model": model, **replay(trace, rule)} for rule in args.sweep.split(",")]
            except FmrBenchError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            for row in rows:
                print("| " + " | ".join(fmt(row[c]) for c in cols) + " |", flush=True)
            continue
        try:
            row = audit_model(model, oracle=args.oracle, accept=args.accept, judge=args.judge,
                              limit=args.limit, step_size=args.step_size, budget=args.budget, seed=args.seed)
        except FmrBenchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("| " + " | ".join(fmt(row[c]) for c in cols) + " |", flush=True)
        if args.json is not None:
            try:
                with args.json.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:
                print(f"error: cannot append to {args.json} ({e.strerror}); pass a writable --json path",
                      file=sys.stderr)
                return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
