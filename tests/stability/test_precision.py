"""The guarded step skips a bad update on the device: parameters, moments and step count untouched."""
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
