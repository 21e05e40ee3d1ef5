"""The run's image grid: what each cell says, and that it is drawn without per-image layout passes."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fmr_bench import plots as viz  # noqa: E402
from fmr_bench.protocol.outcome import SampleOutcome  # noqa: E402

NAMES = ["zero", "one", "two"]


def outcome(k: int, *, validated: bool = True, judge_ok: bool | None = True) -> SampleOutcome:
    audit = None if judge_ok is None else {"J": {"pred": 1 if judge_ok else 2, "conf": 0.8, "ok": judge_ok}}
    return SampleOutcome(id=f"s/{k}", index=k, label=1, target=1, clean_pred=1, oracle_clean=1, validated=validated,
                         steps=3 if validated else 0, final_pred=2 if validated else 1, oracle_pred=1,
                         oracle_conf=0.97, oracle_margin=0.95, oracle_accept=validated, audit=audit)


def test_captions_say_label_predictions_steps_and_both_verdicts():
    (clean, clean_ok), (final, final_ok) = viz.grid_captions(outcome(0), NAMES, None, "J")
    assert clean == "y = one\nclean\npred: one" and clean_ok
    assert final == "3 steps\noracle accepts, p(y)=0.97\njudge: one (= y), p(y)=0.80\npred: two" and not final_ok
    (clean, _), (final, final_ok) = viz.grid_captions(outcome(1, validated=False, judge_ok=None), NAMES, None, "J")
    assert clean == "y = one (not validated)\nclean\npred: one"
    assert final == "0 steps\noracle rejected step 1\npred: one" and final_ok
    _, (final, _) = viz.grid_captions(outcome(2, judge_ok=False), NAMES, ["a", "b", "c"], "J")
    assert "judge: two (not y), p(y)=0.80" in final and final.endswith("pred: c")  # the model's own class names


def test_grid_is_one_axes_with_every_caption_and_no_layout_engine(tmp_path, monkeypatch):
    # One axes and no tight_layout: per-image axes titles made matplotlib measure every title and
    # tick box again and again, most of the time a run spent on its grid.
    from matplotlib.figure import Figure

    def refuse(*a, **k):
        raise AssertionError("tight_layout measures every artist; the grid's layout is computed")

    monkeypatch.setattr(Figure, "tight_layout", refuse)
    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), real_close(fig))[1])
    g = torch.Generator().manual_seed(0)
    items = [(outcome(k, validated=k % 3 != 0), torch.rand(3, 32, 32, generator=g), torch.rand(3, 32, 32, generator=g))
             for k in range(10)]
    path = viz.save_grid(items, tmp_path / "grid.png", class_names=NAMES, model_classes=None, title="T", judge="J")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.texts]
    expected = [c for o, _, _ in items for c, _ in viz.grid_captions(o, NAMES, None, "J")]
    assert texts == [*expected, "T"]
    assert len(ax.images) == 20
    # 8 columns, 2 blocks: the figure is 8 columns wide and no two images overlap
    assert fig.get_size_inches()[0] == pytest.approx(8 * viz.COL_W)
    boxes = [im.get_extent() for im in ax.images]  # (left, right, bottom, top), y downwards: top < bottom
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[1] <= b[0] or b[1] <= a[0] or a[2] <= b[3] or b[2] <= a[3], (a, b)
