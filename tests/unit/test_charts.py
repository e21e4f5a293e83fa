"""The pictures, inspected as matplotlib figures (not pixels): the plan's capacity line,
legends clear of the bars, small time parts labelled, one colour per meaning, units on
the axes; restarts and stops on the loss curve; standard errors on the eval plot."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from conftest import run_cli  # noqa: E402
from test_plan_cli import _model, _profile  # noqa: E402

from llmctl import charts  # noqa: E402


def _bars(ax, prefix):
    return {p.get_gid()[len(prefix):]: p for p in ax.patches if (p.get_gid() or "").startswith(prefix)}


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    from llmctl.config.base import load_config
    from llmctl.config.plan import PlanFile

    tmp = tmp_path_factory.mktemp("plan")
    out = tmp / "p.toml"
    r = run_cli("plan", "compute", "--model", _model(tmp, size="1b"), "--hardware", _profile(tmp, mem=40.0),
                "--global-batch", "64", "--seq-len", "2048", "--strategy", "manual", "--tp", "2", "--pp", "2",
                "--dp", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    return load_config(out, PlanFile)


@pytest.fixture
def plan_fig(plan):
    from llmctl.plan.report import plan_picture

    fig = plan_picture(plan)
    fig.canvas.draw()
    yield fig
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_plan_picture_draws_the_gpu_memory_as_a_line(plan, plan_fig):
    mem_ax = plan_fig.axes[0]
    line = next(ln for ln in mem_ax.lines if ln.get_gid() == "capacity")
    assert list(line.get_ydata()) == [40.0, 40.0] == [plan.inputs.memory_gb] * 2
    assert mem_ax.get_ylim()[1] > 40.0  # the line is inside the picture
    assert "(GB)" in mem_ax.get_ylabel() and "40 GB" in line.get_label()
    # the stacked parts add up to each stage's total
    stage_tops = {}
    for bar in mem_ax.patches:
        if (bar.get_gid() or "").startswith("memory-"):
            x = round(bar.get_x(), 3)
            stage_tops[x] = max(stage_tops.get(x, 0.0), bar.get_y() + bar.get_height())
    want = sorted(m.weights + m.gradients + m.optimizer + m.activations + m.other
                  for m in plan.predicted.memory_per_stage)
    assert sorted(stage_tops.values()) == pytest.approx(want, rel=1e-6)


def test_plan_legends_cover_no_bar(plan_fig):
    renderer = plan_fig.canvas.get_renderer()
    for ax in plan_fig.axes:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        assert box.x0 >= ax.get_window_extent(renderer).x1  # outside the axes, to the right
        for bar in ax.patches:
            assert not box.overlaps(bar.get_window_extent(renderer)), bar.get_gid()


def test_every_time_part_is_a_labelled_bar_small_ones_included(plan, plan_fig):
    time_ax = plan_fig.axes[1]
    parts = {k: v for k, v in plan.predicted.time_breakdown_s.items() if v > 0}
    bars = _bars(time_ax, "time-")
    assert set(bars) == set(parts)
    labels = [t.get_text() for t in time_ax.texts]
    total = sum(parts.values())
    for k, v in parts.items():
        assert any(f"({charts.share(v / total)})" in t for t in labels), (k, labels)
    assert "seconds" in time_ax.get_xlabel()
    # A tiny part (well under 1 %) still gets a readable label inside the figure.
    fig = charts.plan_figure({"stage 0": {"weights": 10.0}}, 80.0, "m",
                             {"compute": 1.0, "p2p": 0.0005, "dp_comm": 0.2}, "t")
    fig.canvas.draw()
    ax = fig.axes[1]
    labels = {t.get_text(): t for t in ax.texts}
    assert set(labels) == {"1 s (83.3%)", "0.2 s (16.7%)", "0.5 ms (0.042%)"}
    box = labels["0.5 ms (0.042%)"].get_window_extent(fig.canvas.get_renderer())
    assert box.x1 <= ax.get_window_extent(fig.canvas.get_renderer()).x1  # room made for the labels


def test_one_colour_per_meaning_across_the_panels(plan_fig):
    mem = _bars(plan_fig.axes[0], "memory-")
    time = _bars(plan_fig.axes[1], "time-")
    colour = {**{f"memory-{k}": tuple(b.get_facecolor()) for k, b in mem.items()},
              **{f"time-{k}": tuple(b.get_facecolor()) for k, b in time.items()}}
    if "activations" in mem and "pipeline_bubble" in time:
        assert colour["memory-activations"] != colour["time-pipeline_bubble"]
    if "optimizer" in mem and "optimizer" in time:  # the same thing: the same colour
        assert colour["memory-optimizer"] == colour["time-optimizer"]
    meanings = {}
    for key, c in colour.items():
        meanings.setdefault(c, set()).add(key.split("-", 1)[1])
    assert all(len(m) == 1 for m in meanings.values()), meanings
    # The table itself: no two meanings share a colour.
    assert len(set(charts.COLOURS.values())) == len(charts.COLOURS)


def _metrics(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_loss_curve_marks_restarts_and_stops_at_their_steps(tmp_path):
    from llmctl.train.plot import run_figure

    train = lambda a, b: [{"kind": "train", "step": s, "loss": 5 - s / 10} for s in range(a, b + 1)]  # noqa: E731
    recs = ([{"kind": "start", "step": 0, "model": "m"}] + train(1, 5)
            + [{"kind": "end", "step": 5, "reason": "preempted"}, {"kind": "start", "step": 5}]
            + train(6, 9)  # then a crash: no end record; the restart resumes from step 7's checkpoint
            + [{"kind": "start", "step": 7}] + train(8, 12) + [{"kind": "end", "step": 12, "reason": "finished"}])
    fig = run_figure(_metrics(tmp_path / "metrics.jsonl", recs))
    ax = fig.axes[0]
    restarts = sorted(ln.get_xdata()[0] for ln in ax.lines if (ln.get_gid() or "").startswith("restart-"))
    stops = [ln.get_xdata()[0] for ln in ax.lines if (ln.get_gid() or "").startswith("stop-")]
    assert restarts == [5, 7] and stops == [5]
    assert "restart (resumed from a checkpoint)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlabel() == "optimizer step" and "nats/token" in ax.get_ylabel()
    # a run that never restarted has no marks
    fig2 = run_figure(_metrics(tmp_path / "m2.jsonl", recs[:6]))
    assert not [ln for ln in fig2.axes[0].lines if ln.get_gid()]


def test_eval_plot_draws_the_standard_errors_as_error_bars():
    from matplotlib.container import ErrorbarContainer

    from llmctl.eval.watch import metrics_figure

    rows = [{"step": 50, "arith/exact_match": 0.25, "arith/exact_match_stderr": 0.05, "ppl/perplexity": 30.0},
            {"step": 100, "arith/exact_match": 0.5, "arith/exact_match_stderr": 0.1, "ppl/perplexity": 20.0}]
    fig = metrics_figure(rows)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["arith/exact_match", "ppl/perplexity"]  # no panel of its own for the stderr
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1
    segs = bars[0].lines[2][0].get_segments()  # one vertical segment per point: value ± stderr
    assert [(s[0][1], s[1][1]) for s in segs] == [pytest.approx((0.2, 0.3)), pytest.approx((0.4, 0.6))]
    assert fig.axes[1].get_xlabel() == "checkpoint step" and "per token" in fig.axes[1].get_ylabel()
