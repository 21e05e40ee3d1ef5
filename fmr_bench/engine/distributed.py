"""``torchrun -m fmr_bench evaluate ...``: the ranks of a torch.distributed job as shards of one run.

Rank ``r`` of ``W`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` from the environment, as
torchrun and SLURM's ``srun`` wrappers set them) runs shard ``r/W`` of the selected
samples (:mod:`fmr_bench.results.shards`: no padding, no sample twice) in its own shard folder
with its own log and lock, on its own device (``cuda:LOCAL_RANK``, or the CPU). When every
rank is done, rank 0 gathers the shards (through torch.distributed, so nodes need not
share a file system), checks and merges them exactly as ``fmr merge`` does, writes the
run folder, and finishes the record through the same code path as a single run. A job
restarted with the same command resumes every rank from its own log.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SettingsError
from ..results.shards import Shard

#: How long a rank waits for the others at the final gather: shards finish at different times.
GATHER_TIMEOUT = _dt.timedelta(hours=24)
#: Progress lines per rank: one each time this fraction of its samples is done (and at the end).
PROGRESS_STEP = 0.1


@dataclass(frozen=True)
class World:
    """This process's place in a torch.distributed job."""

    rank: int
    size: int
    local_rank: int

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.size)

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def world_from_env(env: Mapping[str, str] | None = None) -> World | None:
    """The job this process belongs to, from ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``; None for one process.

    Raises:
        SettingsError: the variables are not whole numbers or do not fit together.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    try:
        size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise SettingsError(f"RANK={env.get('RANK')!r}, WORLD_SIZE={env['WORLD_SIZE']!r}, LOCAL_RANK="
                            f"{env.get('LOCAL_RANK')!r} are not whole numbers; start the job with torchrun") from None
    if size <= 1:
        return None
    if not 0 <= rank < size or local < 0:
        raise SettingsError(f"RANK={rank} does not fit WORLD_SIZE={size}; start the job with torchrun")
    return World(rank, size, local)


def rank_device(setting: str | None, world: World) -> torch.device:
    """One device per rank: ``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` (when GPUs are visible), ``cpu`` stays.

    Raises:
        SettingsError: an explicit ``cuda:N`` (every rank would share it), or too few GPUs.
    """
    from ..runtime import resolve_device

    setting = setting or "auto"
    if setting.startswith("cuda:"):
        raise SettingsError(f"--device {setting} under torchrun would put every rank on one GPU; pass --device "
                            "cuda (or auto): rank r takes cuda:LOCAL_RANK")
    dev = resolve_device(setting)
    if dev.type != "cuda":
        return dev
    if world.local_rank >= torch.cuda.device_count():
        raise SettingsError(f"local rank {world.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                            "start at most one process per GPU (--nproc-per-node)")
    return torch.device("cuda", world.local_rank)


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """The default process group for ``world``: nccl for CUDA devices, gloo on the CPU."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=GATHER_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def gather_to_root(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0 (in rank order), ``None`` elsewhere."""
    import torch.distributed as dist

    out = [None] * world.size if world.is_root else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj`` on every rank, in rank order."""
    import torch.distributed as dist

    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


class RankProgress:
    """Progress of one rank as plain lines (``rank 1/4: 120/500 samples, 3.1 img/s``), with, on
    rank 0, the total over all ranks; rich bars from several processes would garble one terminal.

    Ranks publish their counts in the job's key-value store (no collective call, so no rank
    waits for another to report).
    """

    def __init__(self, world: World, stream=None) -> None:
        self.world = world
        self.stream = stream or sys.stderr
        self._bar = None  # a plain-line fmr_bench.progress.Progress, made at the first report
        self._store = _progress_store()

    def __call__(self, done: int, total: int) -> None:
        from ..progress import Progress

        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.set(f"done/{self.world.rank}", f"{done}/{total}")
        if self._bar is None:  # the clock starts at the first finished sample: loading is not work
            self._bar = Progress(f"rank {self.world.rank}/{self.world.size}", total, done, stream=self.stream,
                                 plain=True, step=PROGRESS_STEP, suffix=self._total if self.world.is_root else None)
            self._bar.__enter__()
        self._bar.update(done, total=total)

    def _total(self) -> str:
        if self._store is None:
            return ""
        done = total = 0
        known = 0
        for r in range(self.world.size):
            key = f"done/{r}"
            try:
                if not self._store.check([key]):
                    continue
                d, t = self._store.get(key).decode().split("/")
            except Exception:  # noqa: BLE001, S112  (progress is a courtesy; never stop the run for it)
                continue
            done, total, known = done + int(d), total + int(t), known + 1
        return f"; all ranks: {done}/{total}" + ("" if known == self.world.size else
                                                 f" ({self.world.size - known} rank(s) not reporting yet)")


def _progress_store():
    try:
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _get_default_store

        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return dist.PrefixStore(f"fmr_bench/progress/{restart}/", _get_default_store())
    except Exception:  # noqa: BLE001  (a torch without it: no total, the run goes on)
        return None


def evaluate_ranks(model: str, data: str, *, world: World, progress: bool | Callable[[int, int], None] = True,
                   write_grid: bool = True, **kwargs: Any):
    """Run this rank's shard, then (rank 0) merge all ranks into the run folder and finish its record.

    Args:
        world: this process's place in the job (:func:`world_from_env`).
        kwargs: the arguments of :func:`fmr_bench.evaluate` (``out`` must name a folder).

    Returns:
        On rank 0 the whole run's :class:`~fmr_bench.results.rundir.FmrResult` (as a single run returns
        it); on the other ranks their shard's result.
    """
    from .fmr import evaluate
    from ..runtime import command_line
    from ..results.shards import ShardPart, merge_parts, write_merged

    if kwargs.get("out") is None:
        raise SettingsError("a torchrun job needs a run folder (--out): each rank keeps its log there to resume")
    device = rank_device(kwargs.pop("device", None), world)
    fresh = kwargs.pop("fresh", False)
    with process_group(world, device):
        bar = RankProgress(world) if progress is True else progress
        mine = evaluate(model, data, shard=world.shard, device=str(device), progress=bar, write_grid=False,
                        fresh=fresh, **kwargs)
        part = ShardPart.load(mine.path)  # this rank's folder, read where it was written
        gathered = gather_to_root((part, mine.reused), world)
        if not world.is_root:
            return mine
        merged = merge_parts([p for p, _ in gathered])
        write_merged(merged, mine.path.parent, command_line(), fresh=fresh)
        if progress is not False:
            print(f"all {world.size} ranks: {len(merged.rows)}/{len(merged.rows)} samples done, merged into "
                  f"{mine.path.parent}", file=sys.stderr, flush=True)
    # the record of the whole run through the single-run code path: every sample is done, so it
    # only reads them back (and draws the grid from the first samples, as a resumed run does)
    result = evaluate(model, data, device=str(device), progress=False, write_grid=write_grid, **kwargs)
    result.reused = all(reused for _, reused in gathered)  # this job computed nothing
    return result


__all__ = ["RankProgress", "World", "all_gather", "evaluate_ranks", "gather_to_root", "process_group",
           "rank_device", "world_from_env"]
