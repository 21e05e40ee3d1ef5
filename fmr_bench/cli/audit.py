"""``fmr audit``: score the validated perturbed images of a finished run (or an export) with a judge."""

from __future__ import annotations

import argparse
from pathlib import Path

from .commands import Command
from .common import add_cache_argument, positive_int, set_cache


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a finished run folder (holding record.json) or an fmr export folder")
    p.add_argument("--judge", required=True,
                   help="the independent judge: any oracle spec or A+B ensemble, e.g. openclip:ViT-L-14/openai "
                        "or builtin:digits-judge")
    p.add_argument("--device", default="auto", help="torch device ('auto' picks cuda when available)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images perturbed at once when x-hat is generated again (default: the run's)")
    add_cache_argument(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="leave the run (or export) folder as it is, e.g. a read-only one: write an audited copy of "
                        "the run to DIR/<run name> (an export's report to DIR/audit-<judge>.json); default: the "
                        "verdicts are added to the run folder itself")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    set_cache(args.cache_dir)
    from rich.console import Console

    from ..errors import DataError, SettingsError
    from ..studies.audit import audit_export, audit_run, is_export
    from .evaluate import audit_table, metrics_table

    path = Path(args.path)
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; pass a run folder (OUT/<model>__<data>__<hash>) or an export folder")
    console = Console(highlight=False, soft_wrap=True)
    if is_export(path):
        if args.batch_size is not None:
            raise SettingsError("--batch-size applies to run folders (regeneration), not to export folders; drop it")
        report = audit_export(path, args.judge, device=args.device, out=args.out)
        console.print(audit_table({"judge": report["judge"], "metrics": report["metrics"]}, title=f"audit of {path}"))
        console.print(f"report: {report['path']}")
        return 0
    result = audit_run(path, args.judge, device=args.device, batch_size=args.batch_size, progress=not args.quiet,
                       out=args.out)
    console.print(metrics_table(result.record))
    console.print(audit_table(result.record["audit"]))
    where = "audited copy" if result.path.resolve() != path.resolve() else "audited in place"
    console.print(f"{where}: {result.path} (verdicts in samples.jsonl, audited metrics in record.json)")
    return 0


COMMAND = Command(help="audit a finished FMR run or export with an independent judge", add_arguments=add_arguments,
                  run=run)
