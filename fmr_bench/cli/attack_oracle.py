"""``fmr attack-oracle``: a targeted white-box attack on the oracle next to classifiers (App. L, Table 15)."""

from __future__ import annotations

import argparse

from .commands import Command
from .common import add_cache_argument, set_cache

#: Rows of the console table: these steps (and the last one).
SHOWN_STEPS = 5


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..studies.attack_oracle import METHODS, TARGET_RULES, AttackSettings

    d = AttackSettings()
    p.add_argument("--oracle", required=True, help="the oracle attacked: builtin:digits-clip, openclip:ARCH/TAG, A+B")
    p.add_argument("--compare", required=True,
                   help="model(s) attacked the same way, comma-separated, e.g. builtin:digits-cnn,builtin:digits-judge")
    p.add_argument("--data", default="digits", help="digits, imagenet:PATH or folder:PATH (default: digits)")
    p.add_argument("--method", choices=METHODS, default=d.method, help=f"pgd (iterated) or fgsm (default: {d.method})")
    p.add_argument("--eps", type=float, default=d.eps, help=f"L-inf radius, pixels in [0, 1] (default: {d.eps:.4g} = 8/255)")
    p.add_argument("--step", type=float, default=None, help="PGD step size (default: eps / 8)")
    p.add_argument("--steps", type=int, default=None, help="PGD steps (default: 80)")
    p.add_argument("--target", choices=tuple(TARGET_RULES), default=d.target,
                   help="target class: next = (y+1) mod C, oracle-runner-up = the oracle's most likely wrong class "
                        f"on the clean image; the same for every model (default: {d.target})")
    p.add_argument("--limit", type=int, default=d.limit, help=f"samples drawn with --seed (default: {d.limit})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the sample draw (default: {d.seed})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per pass (default: {d.batch_size})")
    p.add_argument("--device", default=d.device, help=f"auto, cpu, cuda... (default: {d.device})")
    p.add_argument("--to", default=None, metavar="DIR",
                   help="folder for attack.csv/json/png (default OUT/attack-oracle__<oracle>__<data>__<hash>)")
    p.add_argument("--out", default="runs", help="parent folder of the default --to (default: runs)")
    add_cache_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    from rich.console import Console
    from rich.markup import escape

    from ..studies.attack_oracle import AttackSettings, attack_oracle
    from ..studies.tables import rich_table

    console = Console(highlight=False, soft_wrap=True)
    log = None if args.quiet else (lambda msg: console.print(msg, highlight=False))
    settings = AttackSettings(method=args.method, eps=args.eps, step=args.step, steps=args.steps, target=args.target,
                              limit=args.limit, seed=args.seed, batch_size=args.batch_size, device=args.device)
    res = attack_oracle(args.oracle, args.compare, args.data, settings=settings, to=args.to, out=args.out, log=log)
    steps = res.settings.steps
    shown = sorted({round(k * steps / (SHOWN_STEPS - 1)) for k in range(SHOWN_STEPS)} | {0, steps})
    rows, cols = [], [("step", "step")]
    for j, model in enumerate(res.models):
        cols += [(escape(f"loss [{j + 1}]"), f"l{j}"), (escape(f"p[true] [{j + 1}]"), f"t{j}"),
                 (escape(f"p[target] [{j + 1}]"), f"g{j}")]
    for t in shown:
        row = {"step": t}
        for j, c in enumerate(res.curves):
            row.update({f"l{j}": f"{c.target_loss[t]:.3f}", f"t{j}": f"{c.p_true[t]:.4f}",
                        f"g{j}": f"{c.p_target[t]:.4f}"})
        rows.append(row)
    console.print("models: " + ", ".join(escape(f"[{j + 1}] {m} ({r})") for j, (m, r) in enumerate(zip(res.models, res.roles))))
    s = res.settings
    console.print(rich_table(rows, cols, title=f"targeted {s.method} (eps {s.eps:.4g}, step {s.step:.4g}, "
                                               f"target {s.target}) — means over the samples"))
    console.print(f"table: {res.path / 'attack.csv'}  record: {res.path / 'attack.json'}  plot: {res.plot}")
    return 0


COMMAND = Command(help="targeted PGD/FGSM on the oracle and on classifiers: target loss, p[true], p[target] per step "
                       "(App. L, Table 15)", add_arguments=add_arguments, run=run)
