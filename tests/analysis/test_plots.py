"""The figures: the plain data each `*_data` step builds, and that each `plot_*` step draws it
into a valid PNG (read back with Pillow)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stablesweep.analysis.plots import (
    ObjectiveInfo,
    ParallelInfo,
    RegionInfo,
    lr_limits,
    objective_data,
    parallel_data,
    plot_lr_objective,
    plot_parallel,
    plot_region,
    region_data,
)
from tests.analysis.tables import trial


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame([
        trial(0, 1e-5, "stable", 1.2), trial(1, 1e-3, "stable", 0.6), trial(2, 5e-3, "pruned", 2.0),
        trial(3, 1e-2, "diverged"),
        trial(4, 1e-5, "stable", 1.3, clip=None, precision="bf16", masking="neg_inf"),
        trial(5, 1e-4, "diverged", clip=None, precision="bf16", masking="neg_inf"),
        trial(6, 3e-4, "error", objective=np.nan, initial=np.nan, clip=2.0, precision="bf16", masking="neg_inf"),
        {**trial(7, 1e-3, "stable"), "training.lr": None},  # no lr: on no lr axis
    ])


def png(path) -> tuple[int, int]:
    """The size of a valid PNG at `path` (Pillow refuses anything else)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
        return im.size


def test_region_data_places_each_trial_by_lr_clip_and_panel(table):
    info = region_data(table)
    assert info.y_levels == ["none", "1.0", "2.0"]  # none first, then by value
    assert info.y_label == "gradient clip (max_grad_norm)" and info.lr_key == "training.lr"
    assert info.panel_keys == ("training.precision", "loss.masking")
    assert list(info.panels) == ["bf16 / neg_inf", "fp32 / slice"]
    fp32 = info.panels["fp32 / slice"]
    assert fp32 == {"stable": ([1e-5, 1e-3], [1, 1]), "pruned": ([5e-3], [1]), "diverged": ([1e-2], [1])}
    bf16 = info.panels["bf16 / neg_inf"]
    assert bf16 == {"stable": ([1e-5], [0]), "diverged": ([1e-4], [0]), "error": ([3e-4], [2])}


def test_region_data_brackets_the_boundary_of_each_row(table):
    """Per panel and clip level with both: (largest stable lr, smallest diverged lr); pruned and
    error trials bracket nothing."""
    assert region_data(table).bounds == {"fp32 / slice": {1: (1e-3, 1e-2)}, "bf16 / neg_inf": {0: (1e-5, 1e-4)}}
    stable_only = table[table["verdict"] != "diverged"]
    assert region_data(stable_only).bounds == {}


def test_one_lr_axis_for_several_figures(table):
    a = region_data(table[table["loss.masking"] == "slice"])  # lrs 1e-5 .. 1e-2
    b = region_data(table[table["loss.masking"] == "neg_inf"])  # lrs 1e-5 .. 3e-4
    assert lr_limits([a, b]) == pytest.approx((1e-5 / 1.5, 1e-2 * 1.5))
    assert lr_limits([b]) == pytest.approx((1e-5 / 1.5, 3e-4 * 1.5))
    assert lr_limits([region_data(table.iloc[:0])]) is None


def shaded_pixels(path) -> int:
    """Pixels of the boundary's shading (#ffbf00 at alpha 0.3 over white)."""
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    return int((np.abs(px - [255, 236, 178]).max(axis=1) <= 3).sum())


def test_the_region_figure_shades_the_boundary(table, tmp_path):
    assert shaded_pixels(plot_region(region_data(table), tmp_path / "a.png", title="sweep a",
                                     lr_limits=(1e-6, 1.0))) > 500
    assert shaded_pixels(plot_region(region_data(table[table["verdict"] != "diverged"]), tmp_path / "b.png")) == 0


def test_region_data_without_panels_or_clip(table):
    info = region_data(table.drop(columns=["training.precision", "loss.masking", "training.max_grad_norm"]))
    assert list(info.panels) == ["all trials"] and info.panel_keys == ()
    assert info.y_levels == [""] and info.y_label == "training.max_grad_norm"
    assert sum(len(xs) for xs, _ in info.panels["all trials"].values()) == 7
    assert region_data(table, lr_key="optimizer.lr").panels == {}


def test_objective_data_keeps_finite_objectives(table):
    info = objective_data(table)
    assert info.series == {"stable": ([1e-5, 1e-3, 1e-5], [1.2, 0.6, 1.3]), "pruned": ([5e-3], [2.0]),
                           "diverged": ([1e-2, 1e-4], [3.0, 3.0])}  # the error has no objective
    assert objective_data(table, lr_key="optimizer.lr").series == {}


def test_parallel_data_axes_and_lines(table):
    judged = table[table["training.lr"].notna()]
    info = parallel_data(judged, ["training.lr", "loss.masking", "training.max_grad_norm", "nope", "objective"])
    lr, masking, clip, objective = info.axes  # a key the table lacks has no axis
    assert (lr.key, lr.kind) == ("training.lr", "log")  # spans 1e-5..1e-2: 1000x
    assert [t[1] for t in lr.ticks] == ["1.00e-05", "1.00e-04", "3.00e-04", "1.00e-03", "5.00e-03", "1.00e-02"]
    assert lr.ticks[0][0] == 0.0 and lr.ticks[-1][0] == 1.0 and lr.ticks[3][0] == pytest.approx(2 / 3)
    assert masking.kind == "categorical" and masking.ticks == [(0.0, "neg_inf"), (1.0, "slice")]
    assert clip.kind == "categorical" and clip.ticks == [(0.0, "none"), (0.5, "1.0"), (1.0, "2.0")]
    assert objective.kind == "linear" and [t[1] for t in objective.ticks] == ["0.6", "1.2", "1.3", "2", "3"]
    assert len(info.lines) == 7
    verdict, ys = info.lines[1]  # trial 1: lr 1e-3, slice, clip 1.0, objective 0.6 (the lowest)
    assert verdict == "stable" and ys == pytest.approx([2 / 3, 1.0, 0.5, 0.0])
    assert info.lines[6][0] == "error" and info.lines[6][1][3] is None  # no objective: no point on that axis


def test_parallel_data_scales():
    t = pd.DataFrame({"training.lr": [1e-3, 2e-3], "seed": [1, 1], "width": list(range(2)), "verdict": ["stable"] * 2})
    lr, seed, width = parallel_data(t, ["training.lr", "seed", "width"]).axes
    assert lr.kind == "linear" and lr.ticks == [(0.0, "1.00e-03"), (1.0, "2.00e-03")]  # 2x: not log
    assert seed.kind == "categorical" and seed.ticks == [(0.5, "1")]  # one value: in the middle
    assert width.kind == "categorical"  # few numbers: levels, not a scale
    many = pd.DataFrame({"width": list(range(10)), "verdict": ["stable"] * 10})
    (width,) = parallel_data(many, ["width"]).axes
    assert width.kind == "linear" and width.ticks == [(0.0, "0"), (1.0, "9")]


def test_every_figure_draws_a_png(table, tmp_path):
    sizes = {
        "region": png(plot_region(region_data(table), tmp_path / "region.png")),
        "objective": png(plot_lr_objective(objective_data(table), tmp_path / "objective.png")),
        "parallel": png(plot_parallel(parallel_data(table, ["training.lr", "loss.masking", "objective"]),
                                      tmp_path / "parallel.png", title="test")),
    }
    # figsize x dpi 110: the region two panels wide and its legend, its height grows with the three clip levels
    assert sizes["region"][0] == pytest.approx((2 * 4.2 + 2.0) * 110, abs=1)
    assert sizes["region"][1] == pytest.approx((2.2 + 0.35 * 3) * 110, abs=1)
    assert sizes["objective"] == (704, 440)
    assert sizes["parallel"] == (660, 462)  # three axes: the minimum width


def test_empty_figures_still_draw(tmp_path):
    png(plot_region(RegionInfo(panels={}, y_levels=[""], y_label="", panel_keys=(), lr_key="training.lr"),
                    tmp_path / "region.png"))
    png(plot_lr_objective(ObjectiveInfo(series={}, lr_key="training.lr"), tmp_path / "objective.png"))
    png(plot_parallel(ParallelInfo(axes=[], lines=[]), tmp_path / "parallel.png"))


def test_stalled_trials_get_their_own_marker_and_colour(tmp_path):
    from stablesweep.analysis.plots import COLORS, MARKERS

    df = pd.DataFrame([trial(0, 1e-6, "stalled", 2.9), trial(1, 1e-3, "stable", 0.6), trial(2, 1e-1, "diverged")])
    assert len({MARKERS[v] for v in ("stable", "stalled", "diverged", "error")}) == 4
    assert COLORS["stalled"] not in (COLORS["stable"], COLORS["diverged"])
    info = objective_data(df)
    assert info.series["stalled"] == ([1e-6], [2.9])
    png(plot_lr_objective(info, tmp_path / "objective.png"))
    png(plot_region(region_data(df), tmp_path / "region.png"))


def test_boundary_data_and_figure(tmp_path):
    from stablesweep.analysis.boundary import Run, fit_boundary
    from stablesweep.analysis.plots import boundary_data, plot_boundary

    runs = [Run(lr, "diverged" if lr >= 0.1 * (1 + s) else "stable", s) for lr in (0.05, 0.1, 0.2, 0.4)
            for s in range(3)]
    info = boundary_data(["a", "b"], [fit_boundary(runs), fit_boundary(runs[:1])])
    a, b = info.panels
    assert a["points"] == [(0.05, 0, 3), (0.1, 1, 3), (0.2, 2, 3), (0.4, 3, 3)]
    assert len(a["curve"][0]) == 60 and a["curve"][1][0] < 0.5 < a["curve"][1][-1]
    assert b["curve"] == ([], []) and b["lr_at_risk"] is None and b["note"]
    assert png(plot_boundary(info, tmp_path / "b.png", 30))[0] == 704


def test_ramp_data_and_figure(tmp_path):
    from stablesweep.analysis.plots import plot_ramp, ramp_data

    probes = [[(1e-3, "stable", "climb"), (1e-2, "diverged", "climb"), (5e-3, "stable", "bisect")],
              [(1e-6, "error", "climb")]]
    summary = [{"max_stable_lr": 5e-3, "min_failed_lr": 1e-2, "recommended_lr": 2.5e-3},
               {"max_stable_lr": None, "min_failed_lr": None, "recommended_lr": None}]
    info = ramp_data(["bf16 slice", "config"], probes, summary, budget=30)
    a, b = info.rows
    assert a == {"label": "bf16 slice", "bracket": (5e-3, 1e-2), "recommended": 2.5e-3,
                 "probes": [(1e-3, "stable", False), (1e-2, "diverged", False), (5e-3, "stable", True)]}
    assert b == {"label": "config", "bracket": None, "recommended": None, "probes": [(1e-6, "error", False)]}
    assert info.budget == 30
    width, height = png(plot_ramp(info, tmp_path / "ramp.png"))
    assert width == 9.5 * 110 and height == pytest.approx((0.6 * 2 + 1.6) * 110, abs=1)
