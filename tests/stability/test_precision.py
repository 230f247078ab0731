"""The guarded step skips a bad update on the device: parameters, moments and step count untouched."""
import copy
import math

import pytest
import torch

from stablesweep.stability.precision import make_optimizer, make_precision


def setup(opt_name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    params = list(model.parameters())
    opt = make_optimizer(opt_name, params, lr=0.1, weight_decay=0.01, momentum=0.9, betas=(0.9, 0.999))
    return model, params, opt


def one_step(model, params, opt, prec, poison=None, clip=1.0):
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    if poison == "loss":
        loss = loss + torch.tensor(math.inf)  # inf loss, finite gradients: the masked-target case
    prec.backward(loss)
    if poison == "grad":
        params[0].grad[0, 0] = math.nan
    flags = prec.step(opt, params, loss, clip)
    opt.zero_grad(set_to_none=True)
    return flags


@pytest.mark.parametrize("opt_name", ["adamw", "sgd"])
@pytest.mark.parametrize("poison", ["loss", "grad"])
def test_bad_step_is_skipped_entirely(opt_name, poison):
    model, params, opt = setup(opt_name)
    prec = make_precision("fp32", "cpu")
    one_step(model, params, opt, prec)  # a good step first, so optimizer state exists
    before = [p.detach().clone() for p in params]
    state_before = {k: v.clone() for k, v in opt.state[params[0]].items() if torch.is_tensor(v)}
    flags = one_step(model, params, opt, prec, poison=poison)
    assert flags.skipped.item()
    assert flags.loss_bad.item() == (poison == "loss")
    assert flags.grad_bad.item() == (poison == "grad")
    for b, p in zip(before, params):
        assert torch.equal(b, p)
    for k, v in state_before.items():
        assert torch.equal(v, opt.state[params[0]][k]), k


def test_good_step_updates_and_clips():
    model, params, opt = setup("adamw")
    prec = make_precision("fp32", "cpu")
    before = [p.detach().clone() for p in params]
    flags = one_step(model, params, opt, prec, clip=1e-3)
    assert not flags.skipped.item()
    assert flags.grad_norm.item() > 1e-3  # the norm before clipping is reported
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


def test_bf16_autocast_policy_runs_matmul_in_bf16():
    prec = make_precision("bf16", "cpu")
    with prec.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    assert not prec.scaler.is_enabled()


def test_fp16_policy_uses_a_grad_scaler_and_skips_overflow_without_calling_it_divergence():
    model, params, opt = setup("adamw")
    prec = make_precision("fp16", "cpu")
    assert prec.scaler.is_enabled()
    flags = one_step(model, params, opt, prec, poison="grad")  # like an overflow at scale 65536
    assert flags.skipped.item() and flags.overflow.item() and not flags.grad_bad.item()
    assert prec.scale().item() < 65536.0  # the scaler backed off




@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_graph_step_steps_as_the_op_by_op_step(precision):
    """Twin models, one stepped by OneGraphStep (clip + monitor + capturable AdamW as one CUDA graph,
    gradients kept in place), one by Precision.step: the same weights, optimizer state and monitor
    state after every step, through lr changes, a NaN gradient (skipped in both), a batch of
    another size (a second graph) and an optimizer-state load (the graphs recaptured)."""
    from stablesweep.config import MonitorConfig
    from stablesweep.stability.monitor import DivergenceMonitor
    from stablesweep.stability.precision import OneGraphStep

    def twin(capturable):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).cuda()
        params = list(model.parameters())
        opt = make_optimizer("adamw", params, lr=0.01, weight_decay=0.01, momentum=0.9, betas=(0.9, 0.999),
                             capturable=capturable)
        return model, params, opt, DivergenceMonitor(MonitorConfig(), "cuda", datasets=2)

    prec = make_precision(precision, "cuda")
    (m1, p1, o1, mon1), (m2, p2, o2, mon2) = twin(True), twin(False)
    graphed = OneGraphStep(prec, o1, p1, 1.0, mon1)
    g = torch.Generator().manual_seed(1)
    for i in range(14):
        n = 4 if i in (6, 7) else 8
        x = torch.randn(n, 6, generator=g).cuda()
        labels = torch.randint(0, 5, (n,), generator=g).cuda()
        ids = (labels > 2).long()
        for k, (model, params, opt, mon) in enumerate([(m1, p1, o1, mon1), (m2, p2, o2, mon2)]):
            for group in opt.param_groups:
                group["lr"] = 0.01 / (1 + i)  # as a scheduler writes it: a float
            with prec.autocast():
                logits = model(x)
            per = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
            loss = per.mean()
            prec.backward(loss)
            if i == 9:
                params[0].grad[0, 0] = math.nan
            batch = (labels, ids, per.detach(), None)
            if k == 0:
                flags = graphed(loss, logits, batch)
                opt.zero_grad(set_to_none=False)
            else:
                flags = prec.step(opt, params, loss, 1.0, mon, logits, batch)
                opt.zero_grad(set_to_none=True)
            assert flags.skipped.item() == (i == 9)
        for a, b in zip(p1, p2):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mon1.state_vector(), mon2.state_vector(), equal_nan=True)
        if i == 4:
            state = copy.deepcopy(o1.state_dict())  # the live tensors go on changing
        if i == 10:  # both go back to the optimizer state of step 4; the graphed one recaptures
            assert len(graphed.graphs) == 2  # batches of 8 and of 4
            for opt in (o1, o2):
                opt.load_state_dict(copy.deepcopy(state))
            graphed.reset()
            assert not graphed.graphs
    assert len(graphed.graphs) == 1  # the batch of 8, recaptured after the load
    for a, b in zip(o1.state_dict()["state"].values(), o2.state_dict()["state"].values()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)
        assert float(a["step"]) == float(b["step"]) == 8  # 5 steps at the load, then 3 more
