"""``fmr merge``: put the shards of one FMR run (``fmr evaluate --shard i/n``) together."""

from __future__ import annotations

import argparse

from .commands import Command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folders", nargs="+", metavar="FOLDER",
                   help="shard folders (RUN/shard-I-of-N) or run folders holding them, e.g. copied from each machine")
    p.add_argument("--out", default=None,
                   help="folder for run folders: the merged run goes to OUT/<run name> (default: the run folder "
                        "the shards sit in)")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..runtime import command_line
    from ..results.shards import merge_folders
    from .evaluate import metrics_table, print_notes

    merged, folder = merge_folders(args.folders, args.out, command_line())
    console = Console(highlight=False, soft_wrap=True)
    print_notes(console, merged.record)
    console.print(metrics_table(merged.record))
    for line in merged.record.get("warnings", []):
        console.print(f"[yellow]warning:[/] {line}", highlight=False)
    shards = merged.record["merged_from"]
    console.print(f"merged {len(shards)} shard(s), {len(merged.rows)} samples; record: {folder / 'record.json'}",
                  markup=False)
    console.print("no grid.png: re-run the evaluate command without --shard to draw it (it re-runs only the first "
                  "16 samples for their images)", markup=False)
    return 0


COMMAND = Command(help="merge the shards of an FMR run into the record a single run writes", add_arguments=add_arguments,
                  run=run)
