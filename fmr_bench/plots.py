"""Pictures of a run: original vs perturbed images with labels, predictions and verdicts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .files import save_figure
from .protocol.outcome import SampleOutcome


def finish_figure(fig, path: str | Path, title: str | None = None, dpi: int = 110) -> Path:
    """Give ``fig`` its title, lay it out, write it atomically to ``path`` and close it (also on error)."""
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    try:
        save_figure(fig, path, dpi=dpi)
    finally:
        plt.close(fig)
    return path


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


#: Grid layout, in inches: column width, image side, caption line height, gap between blocks,
#: title band. One caption line is 6 pt type (about 0.083 in) with matplotlib's line spacing.
COL_W, IMG_W, LINE_H, BLOCK_GAP, TITLE_H = 2.1, 1.8, 0.105, 0.2, 0.35


def grid_captions(o: SampleOutcome, class_names: Sequence[str], model_classes: Sequence[str] | None,
                  judge: str | None = None) -> tuple[tuple[str, bool], tuple[str, bool]]:
    """The captions of one sample's two cells, clean and perturbed, each with whether the model was right:
    label, predictions, steps, the oracle's verdict and p(y) on x-hat, and the judge's verdict if any."""
    names = model_classes or class_names
    header = f"y = {class_names[o.label]}" + ("" if o.validated else " (not validated)")
    clean = f"{header}\nclean\npred: {_name(names, o.clean_pred)}"
    final = f"{o.steps} steps{verdict_lines(o, class_names, judge)}\npred: {_name(names, o.final_pred)}"
    return (clean, o.clean_pred == o.target), (final, o.final_pred == o.target)


def save_grid(items: Sequence[tuple[SampleOutcome, torch.Tensor, torch.Tensor]], path: str | Path, *,
              class_names: Sequence[str], model_classes: Sequence[str] | None, title: str = "",
              judge: str | None = None) -> Path | None:
    """Two rows per block: clean image over final image, each under its caption (:func:`grid_captions`),
    green where the model is right and red where it is wrong.

    Drawn on one axes spanning the figure, in inches, at a layout computed here: per-image
    axes with titles made matplotlib measure every title and tick box again and again
    (title placement, ``tight_layout``), which took most of the time of a run's grid.
    """
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(8, len(items))
    blocks = (len(items) + cols - 1) // cols
    captions = [grid_captions(o, class_names, model_classes, judge) for o, _, _ in items]
    # caption bands as high as the longest caption of their row kind (clean, perturbed)
    bands = [LINE_H * (1 + max(c[row][0].count("\n") + 1 for c in captions)) for row in (0, 1)]
    block_h = bands[0] + IMG_W + bands[1] + IMG_W + BLOCK_GAP
    top = TITLE_H if title else 0.1
    width, height = COL_W * cols, top + block_h * blocks
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # y grows downwards, in inches from the top
    ax.axis("off")
    for k, ((_, clean, final), caps) in enumerate(zip(items, captions)):
        x = (k % cols) * COL_W + (COL_W - IMG_W) / 2
        y = top + (k // cols) * block_h
        for img, (text, ok), band in ((clean, caps[0], bands[0]), (final, caps[1], bands[1])):
            y += band
            ax.imshow(img.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest",
                      extent=(x, x + IMG_W, y + IMG_W, y))
            ax.text(x + IMG_W / 2, y - 0.03, text, ha="center", va="bottom", fontsize=6, linespacing=1.2,
                    color="green" if ok else "red")
            y += IMG_W
    ax.set_aspect("auto")  # imshow would otherwise re-fit the limits to the last image
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    if title:
        ax.text(width / 2, TITLE_H / 2, title, ha="center", va="center", fontsize=9)
    path = Path(path)
    try:
        save_figure(fig, path, dpi=110)  # atomic: a full disk never leaves a 0-byte grid behind
    finally:
        plt.close(fig)
    return path
