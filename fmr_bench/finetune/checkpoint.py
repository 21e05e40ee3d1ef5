"""Resumable checkpoints of a fine-tuning run, written so that a kill never loses one.

Layout under ``OUT/checkpoints``::

    step-0000120/model.safetensors      the network's state dict
    step-0000120/optimizer.safetensors  every tensor of the optimiser state
    step-0000120/rng.safetensors        torch CPU / CUDA RNG states, the masks' generator
    step-0000120/state.json             stage, epoch, batch, step, scheduler, caption RNG, settings
    latest.json                         {"dir": "step-0000120"}, replaced atomically last

A new checkpoint is written in full before ``latest.json`` points at it; older ones are
deleted only after that, so at any instant ``latest.json`` names a complete checkpoint.
Everything is read back without executing code (safetensors and JSON).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import OutputError
from ..files import DISK_FULL, atomic_write_file, write_json


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        pid, _, name = key.partition(".")
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(root: Path, step: int, *, net: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    rng: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 1) -> Path:
    """Write checkpoint ``step`` under ``root`` and point ``latest.json`` at it.

    Raises:
        OutputError: the folder is not writable or the disk is full; the previous
            checkpoint is left intact and still named by ``latest.json``.
    """
    from safetensors.torch import save_file, save_model

    name = f"step-{step:07d}"
    folder = root / name
    tmp = root / (name + ".part")
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # through files.atomic_write_file: the umask's mode, and safetensors' I/O errors as OutputError
        atomic_write_file(tmp / "model.safetensors", lambda p: save_model(net, str(p)))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        atomic_write_file(tmp / "optimizer.safetensors", lambda p: save_file(opt_tensors, str(p)))
        rng_tensors = {k: v.contiguous() for k, v in rng.items()}
        atomic_write_file(tmp / "rng.safetensors", lambda p: save_file(rng_tensors, str(p)))
        write_json(tmp / "state.json", {**state, "optimizer": opt_meta})
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        write_json(root / "latest.json", {"dir": name, "step": step})
    except (OSError, OutputError) as e:  # files.write_json reports its OSError as an OutputError
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OutputError):
            why = "the disk is full" if getattr(e, "disk_full", False) else str(e)
        else:
            why = "the disk is full" if e.errno in DISK_FULL else f"{type(e).__name__}: {e.strerror or e}"
        raise OutputError(f"cannot write checkpoint {folder} ({why}); free space or pick another --out, then re-run "
                          "the same command to resume from the last complete checkpoint") from None
    old = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name != name
                 and not p.name.endswith(".part"))
    for p in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return folder


def saved_steps(root: Path) -> int:
    """The step of the checkpoint ``latest.json`` names (0 when there is none): what a resume starts from."""
    folder = latest_checkpoint(root)
    if folder is None:
        return 0
    try:
        return int(json.loads((folder / "state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``latest.json`` names, or None when there is none (or it is unreadable)."""
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    try:
        folder = root / json.loads(pointer.read_text())["dir"]
    except (ValueError, KeyError, OSError):
        return None
    return folder if (folder / "state.json").is_file() else None


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor], dict[str, Any]]:
    """(model state, optimiser state dict, RNG tensors, run state) of a checkpoint folder."""
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    model = load_file(str(folder / "model.safetensors"))
    opt = _unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")), state.pop("optimizer"))
    rng = load_file(str(folder / "rng.safetensors"))
    return model, opt, rng, state
