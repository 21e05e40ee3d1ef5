"""Pictures of a run: original vs perturbed images with labels, predictions and verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .files import save_figure
from .protocol.outcome import SampleOutcome


def _name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names is not None and 0 <= i < len(names) else f"#{i}"


def verdict_lines(o: SampleOutcome, class_names: Sequence[str], judge: str | None = None) -> str:
    """The oracle's verdict and p(y) on x-hat, and the judge's label and p(y) when it audited x-hat."""
    lines = []
    if not o.validated:  # x-hat is the clean image: what matters is that the first step was refused
        lines.append("oracle rejected step 1")
    elif o.oracle_conf is not None:
        lines.append(f"oracle accepts, p(y)={o.oracle_conf:.2f}")
    v = o.verdict(judge) if judge else None
    if v is not None:
        lines.append(f"judge: {_name(class_names, v['pred'])} ({'= y' if v['ok'] else 'not y'}), p(y)={v['conf']:.2f}")
    return "".join("\n" + line for line in lines)


def save_grid(items: Sequence[tuple[SampleOutcome, torch.Tensor, torch.Tensor]], path: str | Path, *,
              class_names: Sequence[str], model_classes: Sequence[str] | None, title: str = "",
              judge: str | None = None) -> Path | None:
    """Two rows per block: clean image over final image; titles give label, predictions, steps,
    the oracle's verdict and confidence on x-hat, and the verdict of ``judge`` (a judge spec) if any."""
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(8, len(items))
    blocks = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(2 * blocks, cols, figsize=(2.1 * cols, 5.2 * blocks), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (o, clean, final) in enumerate(items):
        r, c = 2 * (k // cols), k % cols
        header = f"y = {class_names[o.label]}" + ("" if o.validated else " (not validated)")
        for row, img, pred, tag in ((r, clean, o.clean_pred, f"{header}\nclean"),
                                    (r + 1, final, o.final_pred, f"{o.steps} steps")):
            if row == r + 1:
                tag += verdict_lines(o, class_names, judge)
            ax = axes[row][c]
            ax.imshow(img.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            ok = pred == o.target
            ax.set_title(f"{tag}\npred: {_name(model_classes or class_names, pred)}", fontsize=6,
                         color="green" if ok else "red")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        save_figure(fig, path, dpi=110)  # atomic: a full disk never leaves a 0-byte grid behind
    finally:
        plt.close(fig)
    return path
