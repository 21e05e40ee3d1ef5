"""The one folder scanner: which files under some folders are run records.

``fmr results``, the leaderboards and the ood-accuracy baseline all find records through
:func:`iter_record_files`, with one rule:

- a run record is a file named ``record.json`` (FMR and static runs) or ``finetune.json``
  (fine-tuning runs), and a study's output one of :data:`STUDY_FILES`; a file named
  directly is read whatever its name;
- runs set aside by ``--fresh`` (``replaced-<time>/`` folders) are never counted;
- the records of a sharded run's parts (``shard-<i>-of-<n>/`` folders) are left out unless
  ``shards=True``: a merged run (``fmr merge``, or torchrun's rank 0) shows as one row, like a
  run made in one piece, and a run whose shards are not merged yet shows only on request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import DataError

RECORD_FILE = "record.json"
FINETUNE_FILE = "finetune.json"
#: Study outputs ``fmr results`` lists (fmr_bench.results.study), by file name -> the study that writes it.
STUDY_FILES = {"sweep.json": "sweep", "compare.json": "compare-generators", "transfer.json": "transfer",
               "wise.json": "wise-ft"}
#: File names a folder search reads as records.
RECORD_NAMES = (RECORD_FILE, FINETUNE_FILE, *STUDY_FILES)
#: Folders of earlier runs set aside by ``--fresh``: never entered.
SET_ASIDE = "replaced-"
#: Folders of one shard of a run (``shard-<i>-of-<n>``).
SHARD_FOLDER = re.compile(r"shard-\d+-of-\d+")


def is_set_aside(parts: Iterable[str]) -> bool:
    return any(part.startswith(SET_ASIDE) for part in parts)


def is_shard_part(parts: Iterable[str]) -> bool:
    return any(SHARD_FOLDER.fullmatch(part) for part in parts)


def iter_record_files(paths: Iterable[str | Path], *, shards: bool = False,
                      names: tuple[str, ...] = RECORD_NAMES) -> Iterator[Path]:
    """Record files under the folders (and the files) given, each once, sorted by path.

    Args:
        paths: folders to search, or record files (always read, whatever their name).
        shards: also the records of shard parts (``shard-<i>-of-<n>/record.json``).
        names: the file names a folder search reads (e.g. only ``record.json``).

    Raises:
        DataError: a path that does not exist.
    """
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            found.setdefault(p.resolve(), None)
        elif p.is_dir():
            for name in names:
                for f in p.rglob(name):
                    inner = f.relative_to(p).parts[:-1]
                    if is_set_aside(inner) or (not shards and is_shard_part(inner)):
                        continue
                    found.setdefault(f.resolve(), None)
        else:
            raise DataError(f"{p} does not exist; pass run folders (or record files) to read")
    yield from sorted(found)


__all__ = ["FINETUNE_FILE", "RECORD_FILE", "RECORD_NAMES", "SET_ASIDE", "iter_record_files"]
