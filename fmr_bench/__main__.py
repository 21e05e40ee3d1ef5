"""``python -m fmr_bench ...``: the ``fmr`` command line (also what ``torchrun -m fmr_bench`` runs)."""

from __future__ import annotations

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
