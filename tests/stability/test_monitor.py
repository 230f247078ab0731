"""The divergence monitor judges from device flags read once per report."""
import math

import pytest
import torch

from stablesweep.config import MonitorConfig
from stablesweep.stability.monitor import SIGNALS, DivergenceMonitor, accumulate, progress


def feed(mon, losses, grads=None):
    for i, loss in enumerate(losses):
        g = 1.0 if grads is None else grads[i]
        mon.update(torch.tensor(loss), torch.tensor(g))


def test_finite_decreasing_losses_are_stable():
    mon = DivergenceMonitor(MonitorConfig())
    feed(mon, [3.0 - 0.01 * i for i in range(50)])
    snap, v = mon.read()
    assert v.verdict == "stable" and v.reason is None and v.first_bad_step == -1
    assert snap.steps == 50 and snap.initial_loss == 3.0
    assert 2.5 < snap.smoothed_loss < 2.7
    final = mon.judge(snap, final=True)
    assert final.verdict == "stable"  # it fell 14%: it trained


def test_a_constant_loss_at_the_end_of_the_budget_is_stalled():
    mon = DivergenceMonitor(MonitorConfig())
    feed(mon, [3.0 + 0.05 * math.sin(i) for i in range(60)])  # finite, noisy, flat: lr far too small
    snap, so_far = mon.read()
    assert so_far.verdict == "stable"  # stalled is a verdict on a spent budget only
    v = mon.judge(snap, final=True)
    assert (v.verdict, v.reason, v.first_bad_step) == ("stalled", "no_progress", -1)
    assert abs(progress(snap)) < 0.05


def test_a_loss_that_rises_and_stays_finite_is_stalled_not_diverged():
    mon = DivergenceMonitor(MonitorConfig())
    feed(mon, [3.0 + 0.02 * i for i in range(60)])  # +40%, below the 4x explosion rule
    snap = mon.snapshot()
    v = mon.judge(snap, final=True)
    assert v.verdict == "stalled" and progress(snap) < -0.2


def test_min_progress_sets_the_bar():
    losses = [3.0 - 0.005 * i for i in range(60)]  # falls about 9%
    for bar, verdict in [(0.05, "stable"), (0.2, "stalled"), (0.0, "stable")]:
        mon = DivergenceMonitor(MonitorConfig(min_progress=bar))
        feed(mon, losses)
        assert mon.judge(mon.snapshot(), final=True).verdict == verdict, bar


def test_min_progress_zero_turns_the_stall_rule_off():
    rising = [3.0 + 0.02 * i for i in range(60)]  # finite, +40%: stalled under any positive bar
    for bar, verdict in [(0.1, "stalled"), (0.0, "stable")]:
        mon = DivergenceMonitor(MonitorConfig(min_progress=bar))
        feed(mon, rising)
        assert mon.judge(mon.snapshot(), final=True).verdict == verdict, bar


def test_divergence_wins_over_a_stall():
    mon = DivergenceMonitor(MonitorConfig())
    feed(mon, [3.0] * 20 + [math.nan] + [3.0] * 20)
    assert mon.judge(mon.snapshot(), final=True).verdict == "diverged"


def test_nonfinite_loss_names_its_first_step():
    mon = DivergenceMonitor(MonitorConfig())
    losses = [2.0] * 7 + [math.inf, math.nan, 2.0]
    feed(mon, losses)
    snap, v = mon.read()
    assert (v.verdict, v.reason, v.first_bad_step) == ("diverged", "nonfinite_loss", 7)
    assert snap.nonfinite_loss_steps == 2


def test_nonfinite_gradient_with_finite_loss():
    mon = DivergenceMonitor(MonitorConfig())
    feed(mon, [2.0] * 6, grads=[1, 1, 1, math.nan, 1, 1])
    _, v = mon.read()
    assert (v.verdict, v.reason, v.first_bad_step) == ("diverged", "nonfinite_grad", 3)


def test_loss_explosion_over_factor_times_best_smoothed():
    mon = DivergenceMonitor(MonitorConfig(explosion_factor=4.0, smoothing=0.5, min_steps=5))
    losses = [2.0 - 0.1 * i for i in range(15)] + [50.0] * 5
    feed(mon, losses)
    _, v = mon.read()
    assert v.reason == "loss_explosion" and v.first_bad_step == 15


def test_explosion_rule_waits_for_min_steps_and_ignores_noise():
    mon = DivergenceMonitor(MonitorConfig(explosion_factor=4.0, min_steps=10))
    feed(mon, [2.0, 2.5, 1.8, 3.0, 2.2, 2.9] * 10)  # noisy but bounded
    assert mon.read()[1].verdict == "stable"


def test_skipped_steps_tolerated_up_to_the_threshold():
    mon = DivergenceMonitor(MonitorConfig(max_skipped_steps=2))
    feed(mon, [2.0, math.inf, 2.0, math.nan, 2.0])
    assert mon.read()[1].verdict == "stable"
    feed(mon, [math.inf])
    _, v = mon.read()
    assert v.verdict == "diverged" and v.first_bad_step == 1


def test_fp16_overflow_steps_are_not_divergence():
    mon = DivergenceMonitor(MonitorConfig())
    t = torch.tensor
    mon.update(t(2.0), t(math.inf), scale=t(65536.0))  # the scaler's range finding
    mon.update(t(2.0), t(1.0), scale=t(32768.0))
    snap, v = mon.read()
    assert v.verdict == "stable" and snap.overflow_steps == 1


def test_state_round_trip():
    a = DivergenceMonitor(MonitorConfig())
    feed(a, [3.0, 2.0, math.inf, 1.5])
    b = DivergenceMonitor(MonitorConfig())
    b.load_state_dict(a.state_dict())
    assert a.read() == b.read()


def test_fp16_nonfinite_gradient_at_scale_one_is_divergence():
    mon = DivergenceMonitor(MonitorConfig())
    mon.update(torch.tensor(2.0), torch.tensor(math.inf), scale=torch.tensor(1.0))
    assert mon.read()[1].reason == "nonfinite_grad"


def test_the_state_is_written_in_place():
    """The tensors a CUDA graph reads and writes never move: update, the initial loss and a
    checkpoint's state all write into them."""
    mon = DivergenceMonitor(MonitorConfig(), datasets=2)
    v, ring, acc = mon.v, mon.ring, mon.acc
    mon.set_initial_loss(torch.tensor(3.0))
    feed(mon, [3.0, 2.5])
    mon.update(torch.tensor(2.0), torch.tensor(1.0), logits=torch.zeros(2, 3),
               batch=(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1.0, 2.0]), None))
    other = DivergenceMonitor(MonitorConfig(), datasets=2)
    other.load_state_dict(mon.state_dict())
    assert mon.v is v and mon.ring is ring and mon.acc is acc
    assert other.snapshot() == mon.snapshot() and mon.snapshot().initial_loss == 3.0
    assert acc.tolist() == [[1.0, 1.0, 1.0], [2.0, 1.0, 0.0]]  # loss sum, count, correct per dataset


def steps(mon, losses, logits, labels, grads, measure_every=0, params=None):
    """Feed `mon` as the Trainer does: each step with its logits and batch; with `params`, the
    update-to-weight ratio every `measure_every` steps around a change of the weights."""
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(len(labels), device=labels.device) % 2
    for i, (loss, grad) in enumerate(zip(losses, grads)):
        if params and measure_every and (i + 1) % measure_every == 0:
            mon.keep_weights(params)
            for p in params:
                p.mul_(1 + 0.01 * (i + 1))
        dev = labels.device
        mon.update(torch.tensor(loss, device=dev), torch.tensor(grad, device=dev), logits=logits * (1 + i),
                   batch=(labels, ids, torch.rand(len(labels), generator=g).to(dev), None))
        if params and measure_every and (i + 1) % measure_every == 0:
            mon.record_update(params)


@pytest.mark.gpu
def test_cuda_graphs_agree_with_the_eager_monitor():
    """The replayed graphs give the eager monitor's state, verdict and sums, step after step,
    through a spike (step 9), an inf gradient (12), a NaN loss (14), the sampled update ratio, a checkpoint load and a
    batch of another size (a second graph)."""
    cfg = MonitorConfig(min_steps=3, history_steps=4, warn_grad_spike=3.0, warn_max_logit=8.0)
    losses = [3.0 - 0.05 * i for i in range(14)] + [math.nan, 2.0, 2.1]
    grads = [10.0 if i == 9 else (math.inf if i == 12 else 1.0) for i in range(len(losses))]
    mons = [DivergenceMonitor(cfg, "cuda", datasets=2, graph=False), DivergenceMonitor(cfg, "cuda", datasets=2)]
    logits = torch.randn(6, 5, device="cuda")
    labels = torch.tensor([0, 1, 2, 3, 4, 0], device="cuda")
    for mon in mons:
        params = [torch.ones(3, device="cuda"), torch.full((2, 2), 2.0, device="cuda")]
        steps(mon, losses, logits, labels, grads, measure_every=5, params=params)
        steps(mon, [2.0, 1.9], logits[:4], labels[:4], [1.0, 1.0])
    eager, graphed = mons
    assert graphed.cuda_graphs == 4 and eager.cuda_graphs == 0  # two step shapes, the weights' copy and the ratio
    assert eager.snapshot() == graphed.snapshot()
    assert eager.read()[1] == graphed.read()[1] and eager.read()[1].reason == "nonfinite_grad"  # step 12
    assert graphed.snapshot().warnings["grad_spike"] == 9 and graphed.snapshot().signals["update_ratio"] > 0
    torch.testing.assert_close(eager.state_vector(), graphed.state_vector(), equal_nan=True)
    torch.testing.assert_close(eager.acc, graphed.acc)
    torch.testing.assert_close(eager.ring, graphed.ring, equal_nan=True)
    state = eager.state_dict()
    graphed.load_state_dict(state)  # in place: the graphs go on from it
    for mon in mons:
        steps(mon, [1.8], logits, labels, [1.0])
    torch.testing.assert_close(eager.state_vector(), graphed.state_vector(), equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_graphed_monitor_trains_as_the_eager_one(tmp_path, precision):
    """`stablesweep train` on the GPU: the same verdict, signals and per-dataset losses with and
    without the CUDA graphs (bf16/fp32: the whole guarded step one graph, its lr the warm-up and
    cosine schedule's; fp16: the monitor's graph alone), and a run resumed from its checkpoint at
    step 20 (the graphs recaptured) ends where the uninterrupted one does."""
    from stablesweep.config import load_config
    from stablesweep.data.synthetic import write_synthetic
    from stablesweep.train import Trainer

    path = write_synthetic(tmp_path / "data", names_classes={"a": 3, "b": 4}, per_class=16, image_size=16)
    over = ["training.steps=40", "training.batch_size=16", "model.name=small_cnn", "data.image_size=16",
            f"training.precision={precision}", "training.warmup_steps=5", "training.schedule=cosine"]
    graphed = Trainer(load_config(path, over), device="cuda")
    g = graphed.run()
    plain = Trainer(load_config(path, [*over, "monitor.cuda_graphs=false"]), device="cuda")
    p = plain.run()
    assert plain.one_graph is None and (graphed.one_graph is None) == (precision == "fp16")
    if graphed.one_graph is not None:
        assert len(graphed.one_graph.graphs) == 1
    assert (g.verdict, g.steps) == (p.verdict, p.steps) == ("stable", 40)
    assert g.final_loss == pytest.approx(p.final_loss, rel=1e-3)
    assert g.signals == pytest.approx(p.signals, rel=1e-3)
    first = Trainer(load_config(path, over), device="cuda")
    first.run(checkpoint_dir=tmp_path / "ckpt", until=20)
    resumed = Trainer(load_config(path, over), device="cuda")
    resumed.load(tmp_path / "ckpt" / "checkpoint_00000020")
    r = resumed.run()
    assert r.steps == 40 and r.final_loss == pytest.approx(g.final_loss, rel=1e-3)
    for a, b in zip(resumed.params, graphed.params):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_history_keeps_the_last_steps_at_their_true_steps():
    mon = DivergenceMonitor(MonitorConfig(history_steps=8))
    losses = [3.0 - 0.01 * i for i in range(20)] + [50.0, math.inf]
    feed(mon, losses, grads=[1.0] * 20 + [30.0, math.nan])
    hist = mon.history()
    assert [h[0] for h in hist] == list(range(14, 22))
    assert hist[-2][1:] == (50.0, 30.0) and math.isinf(hist[-1][1]) and math.isnan(hist[-1][2])
    assert hist[0][1] == pytest.approx(3.0 - 0.14)
    short = DivergenceMonitor(MonitorConfig(history_steps=8))
    feed(short, [2.0, 1.0])
    assert short.history() == [(0, 2.0, 1.0), (1, 1.0, 1.0)]


def test_history_survives_a_checkpoint():
    mon = DivergenceMonitor(MonitorConfig(history_steps=4))
    feed(mon, [1.0, 2.0, 3.0])
    other = DivergenceMonitor(MonitorConfig(history_steps=4))
    other.load_state_dict(mon.state_dict())
    feed(other, [4.0])
    assert [h[1] for h in other.history()] == [1.0, 2.0, 3.0, 4.0]


def test_a_measured_initial_loss_is_kept():
    mon = DivergenceMonitor(MonitorConfig())
    mon.set_initial_loss(torch.tensor(4.0))
    feed(mon, [3.0] * 30)
    snap = mon.snapshot()
    assert snap.initial_loss == 4.0 and progress(snap) == pytest.approx(0.25)


# ---- early-warning signals ---------------------------------------------------------------------

def test_a_gradient_norm_spike_warns_against_the_running_median():
    mon = DivergenceMonitor(MonitorConfig(warn_grad_spike=5.0, min_steps=10, history_steps=8))
    grads = [50.0] + [1.0 + 0.01 * (i % 3) for i in range(24)] + [6.0, 1.0]  # step 0 is before min_steps
    feed(mon, [2.0] * len(grads), grads)
    snap = mon.snapshot()
    assert snap.warnings["grad_spike"] == 25
    assert snap.signals["grad_spike"] == pytest.approx(6.0 / 1.01)
    assert snap.at_risk == ("grad_spike", 25)
    calm = DivergenceMonitor(MonitorConfig(warn_grad_spike=5.0, history_steps=8))
    feed(calm, [2.0] * 30, [1.0 + 0.5 * (i % 2) for i in range(30)])
    assert calm.snapshot().at_risk is None and calm.snapshot().signals["grad_spike"] < 2


def converging_norms(steps=150, seed=0):
    """A converging run's gradient norms: 3 at the start, shrinking 10x every ~46 steps towards 0
    with log-normal noise (sigma 0.3), and from step 80 on a harder batch every 9th step at 12x
    the others (as ResNet-18 on real digits near convergence, where most batches are fit)."""
    import random

    rng = random.Random(seed)
    return [3.0 * math.exp(-i / 20) * math.exp(rng.gauss(0.0, 0.3)) * (12 if i >= 80 and i % 9 == 0 else 1)
            for i in range(steps)]


def test_a_converging_runs_shrinking_noisy_norms_do_not_warn_but_a_genuine_spike_does():
    norms = converging_norms()
    losses = [2.0 * math.exp(-i / 30) for i in range(len(norms))]
    mon = DivergenceMonitor(MonitorConfig())  # the defaults: warn above 5, floor 0.1, history 32
    feed(mon, losses, norms)
    snap = mon.snapshot()
    assert snap.at_risk is None and snap.signals["grad_spike"] < 3, snap.signals
    # the same trace against the bare median warns: the floor is what keeps it quiet
    bare = DivergenceMonitor(MonitorConfig(grad_spike_floor=0.0))
    feed(bare, losses, norms)
    assert bare.snapshot().warnings["grad_spike"] >= 0 and bare.snapshot().signals["grad_spike"] > 5
    # a genuine spike, late (back to the norm's early scale, ~1000x the then median) or mid-run
    # (10x the running median, while that is still the run's own scale), warns at its step
    for at, size in ((140, 3.0), (20, 10 * sorted(norms[:20])[9])):
        spiked = norms[:at] + [size] + norms[at + 1:]
        mon = DivergenceMonitor(MonitorConfig())
        feed(mon, losses, spiked)
        assert mon.snapshot().at_risk == ("grad_spike", at), (at, mon.snapshot().signals)


def test_logits_give_the_largest_logit_and_logsumexp():
    mon = DivergenceMonitor(MonitorConfig(warn_max_logit=30.0, warn_logsumexp=30.0))
    small = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    mon.update(torch.tensor(2.0), torch.tensor(1.0), logits=small)
    snap = mon.snapshot()
    assert snap.signals["max_logit"] == pytest.approx(3.0)
    assert snap.signals["logsumexp"] == pytest.approx(torch.logsumexp(small, 1).abs().max().item())
    assert snap.at_risk is None
    mon.update(torch.tensor(2.0), torch.tensor(1.0), logits=torch.tensor([[-40.0, -45.0, -50.0]]))  # |lse| ~40
    mon.update(torch.tensor(2.0), torch.tensor(1.0), logits=torch.zeros(0, 3))  # an empty batch: no value
    snap = mon.snapshot()
    assert snap.warnings == {"grad_spike": -1, "update_ratio": -1, "max_logit": 1, "logsumexp": 1, "scale_drops": -1}
    assert snap.signals["max_logit"] == 50.0 and snap.at_risk == ("max_logit", 1)  # ties: in SIGNALS order


def test_loss_scale_drops_count_after_the_scalers_warm_up():
    mon = DivergenceMonitor(MonitorConfig(warn_scale_drops=2, min_steps=3))
    t = torch.tensor
    for step, g in enumerate([math.inf, math.inf, 1.0, 1.0, math.inf, 1.0, math.inf, 1.0]):
        mon.update(t(2.0), t(g), scale=t(2.0 ** (16 - step)))
    snap, v = mon.read()
    assert v.verdict == "stable" and snap.overflow_steps == 4
    assert snap.signals["scale_drops"] == 2 and snap.warnings["scale_drops"] == 6


def test_update_ratio_is_the_step_over_the_weights_and_recorded_at_its_step():
    mon = DivergenceMonitor(MonitorConfig(warn_update_ratio=0.05))
    w = [torch.tensor([3.0, 4.0]), torch.zeros(2, 2)]
    mon.keep_weights(w)
    w[0] += torch.tensor([0.3, 0.0])
    w[1] += 0.2  # |delta| = sqrt(0.09 + 4 * 0.04) = 0.5, |before| = 5
    mon.record_update(w)
    assert mon.snapshot().signals["update_ratio"] == pytest.approx(0.1)
    mon = DivergenceMonitor(MonitorConfig(warn_update_ratio=0.05))
    feed(mon, [2.0] * 4)
    w = [torch.tensor([3.0, 4.0]), torch.zeros(2, 2)]
    mon.keep_weights(w)
    w[0] *= 1.01  # |delta| / |w| = 0.01 (w[1] stays 0)
    mon.record_update(w)
    feed(mon, [2.0] * 3)
    mon.keep_weights(w)
    w[0] *= 1.1  # 0.1
    mon.record_update(w)
    snap = mon.snapshot()
    assert snap.signals["update_ratio"] == pytest.approx(0.1) and snap.warnings["update_ratio"] == 6
    assert snap.steps == 7 and mon.read()[1].verdict == "stable"  # a flag, not a verdict


def test_per_dataset_sums_count_only_allowed_classes():
    """accumulate: loss sum, count and correct per dataset; a dataset's prediction is taken over its
    own classes only (the allowed mask)."""
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 9.0, 2.0]])
    allowed = torch.tensor([[True, False, False], [False, True, True]])
    acc = accumulate(torch.zeros(2, 3, dtype=torch.float64), logits, torch.tensor([0, 1, 2]),
                     torch.tensor([0, 0, 1]), torch.tensor([1.0, 2.0, 4.0]), allowed)
    # dataset 0 allows class 0 only: both its samples predict 0 (one right); dataset 1 picks 1 over 2
    assert acc.tolist() == [[3.0, 2.0, 1.0], [4.0, 1.0, 0.0]]


def test_a_null_threshold_never_warns_and_metrics_name_every_signal():
    mon = DivergenceMonitor(MonitorConfig(warn_max_logit=None, warn_logsumexp=None))
    mon.update(torch.tensor(2.0), torch.tensor(1.0), logits=torch.full((2, 3), 1e4))
    m = mon.snapshot().signal_metrics()
    assert m["at_risk"] is False and m["at_risk_signal"] is None and m["at_risk_step"] == -1
    assert m["signal/max_logit"] == 1e4 and m["warn_step/max_logit"] == -1
    assert set(m) == {"at_risk", "at_risk_signal", "at_risk_step"} | {f"{k}/{n}" for n in SIGNALS
                                                                       for k in ("signal", "warn_step")}


def test_a_checkpoint_from_before_the_signals_still_loads():
    mon = DivergenceMonitor(MonitorConfig())
    feed(mon, [3.0, 2.0])
    old = {"v": mon.state_vector()[:15].clone()}  # the 15 fields a checkpoint had before the signals
    other = DivergenceMonitor(MonitorConfig())
    other.load_state_dict(old)
    assert other.snapshot().steps == 2 and other.snapshot().warnings["grad_spike"] == -1


def test_a_blow_up_before_min_steps_is_an_explosion_against_the_initial_loss():
    """The issue's lr 1e3 trial: 330 at step 1 against an initial 3.29, before min_steps (10):
    diverged at step 1, where the loss crossed, not where a rule armed."""
    mon = DivergenceMonitor(MonitorConfig(min_steps=10))
    mon.set_initial_loss(torch.tensor(3.29))
    feed(mon, [3.3, 330.0, 2.0e5, 1.4e7, 1.4e7])
    _, v = mon.read()
    assert (v.verdict, v.reason, v.first_bad_step) == ("diverged", "loss_explosion", 1)


def test_the_first_bad_step_is_where_the_raw_loss_crossed_not_where_the_smoothed_did():
    """A loss that jumps 10x at step 12 and stays there: the smoothed loss (beta 0.9) crosses 4x
    its best steps later; the divergence began at 12."""
    mon = DivergenceMonitor(MonitorConfig(min_steps=5, smoothing=0.9))
    feed(mon, [2.0] * 12 + [20.0] * 20)
    snap, v = mon.read()
    assert v.reason == "loss_explosion" and v.first_bad_step == 12
    assert snap.steps == 32


def test_a_spike_that_recovers_is_not_the_start_of_a_later_explosion():
    mon = DivergenceMonitor(MonitorConfig(min_steps=5, smoothing=0.5))
    feed(mon, [2.0] * 12 + [9.0] + [2.0] * 10 + [40.0] * 6)  # 9 at step 12 crosses 4x best (2) once, then recovers
    _, v = mon.read()
    assert v.reason == "loss_explosion" and v.first_bad_step == 23


def test_a_loss_within_the_factor_of_the_initial_before_min_steps_is_stable():
    mon = DivergenceMonitor(MonitorConfig(min_steps=10))
    mon.set_initial_loss(torch.tensor(3.0))
    feed(mon, [3.0, 9.0, 11.0, 6.0, 3.0, 2.5])  # up to 3.7x the initial: under the 4x line
    assert mon.read()[1].verdict == "stable"
