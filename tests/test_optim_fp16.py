"""fp16 with a gradient scaler: every pass unscaled before it is used, an inf step skipped and the
scale lowered, no path where scaled gradients are stepped; in a plain loop and under Lightning."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from sam_references import flat, make_batches, make_mlp, norm
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

import lightning_wass
from lightning_wass import DivergenceError
from lightning_wass.optim import OTMDR, SAM

RHO, LR = 0.05, 0.1


def autocast():
    return torch.autocast("cpu", dtype=torch.float16)


def reference_fp16_sam(batches, rho=RHO):
    """SAM with fp16 autocast and no loss scaling (written out): what a correctly unscaled run computes."""
    model = make_mlp()
    base = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    params = list(model.parameters())
    for x, y in batches:
        def grads():
            model.zero_grad()
            with autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return [p.grad.detach().clone() for p in params]

        g = grads()
        e = [rho * t / (norm(g) + 1e-12) for t in g]
        with torch.no_grad():
            for p, t in zip(params, e):
                p.add_(t)
        g_adv = grads()
        with torch.no_grad():
            for p, t, a in zip(params, e, g_adv):
                p.sub_(t)
                p.grad = a
        base.step()
    return flat(model)


def scaled_closure(model, opt, scaler, x, y, poison=None):
    def closure():
        opt.zero_grad()
        with autocast():
            loss = F.cross_entropy(model(x), y)
        if poison is not None and poison(opt.current_pass):
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        return loss

    return closure


@pytest.mark.parametrize("call", ["optimizer.step", "scaler.step after a backward"])
def test_plain_loop_with_a_grad_scaler_matches_unscaled_fp16_sam(call):
    batches = make_batches()
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    start = flat(model).clone()
    for x, y in batches:
        if call == "optimizer.step":
            opt.step(scaled_closure(model, opt, scaler, x, y), grad_scaler=scaler)
        else:
            # davda54's README closure form under AMP: a scaled backward, then scaler.step(optimizer, closure)
            # with the closure passed positionally (torch's guard against closures only sees keywords)
            def closure():
                with autocast():
                    loss = F.cross_entropy(model(x), y)
                scaler.scale(loss).backward()
                return loss

            with autocast():
                loss = F.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            with warnings.catch_warnings():  # torch's own notice about its optimizer-handles-scaling contract
                warnings.simplefilter("ignore", FutureWarning)
                warnings.filterwarnings("ignore", message=".*davda54/sam README form")
                scaler.step(opt, closure)
        scaler.update()
    expected = reference_fp16_sam(batches)
    torch.testing.assert_close(flat(model), expected, rtol=1e-4, atol=1e-5)
    # the update has the fp32 size, not the loss scale's
    assert (flat(model) - start).abs().max() < 1.0
    assert scaler.get_scale() == 2.0**12  # no inf: the scale stays (growth_interval not reached)


def test_an_inf_in_any_pass_skips_the_step_and_lowers_the_scale_then_training_goes_on():
    batches = make_batches(n_batches=3)
    model = make_mlp()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), noise_std=0.0, lr=LR, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = batches[0]
    opt.step(scaled_closure(model, opt, scaler, x, y), grad_scaler=scaler)
    scaler.update()
    after_first = flat(model).clone()
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    x, y = batches[1]
    # an overflow in the final (perturbed) pass only: the loss at theta is finite
    opt.step(scaled_closure(model, opt, scaler, x, y, poison=lambda info: info.is_final), grad_scaler=scaler)
    assert opt.last_step_skipped
    scaler.update()
    assert scaler.get_scale() == 2.0**9  # backoff_factor 0.5, as after any skipped GradScaler step
    assert torch.equal(flat(model), after_first)
    for p, m in zip(model.parameters(), momentum):
        assert torch.equal(opt.state[p]["momentum_buffer"], m)
    assert all(p.grad is None for p in model.parameters())
    x, y = batches[2]
    opt.step(scaled_closure(model, opt, scaler, x, y), grad_scaler=scaler)
    scaler.update()
    assert not opt.last_step_skipped and opt.completed_steps == 2
    assert not torch.equal(flat(model), after_first)


def test_a_non_finite_loss_at_theta_is_divergence_even_with_a_scaler():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    x, y = make_batches(1)[0]
    before = flat(model).clone()
    with pytest.raises(DivergenceError, match="pass 0"):
        opt.step(scaled_closure(model, opt, scaler, x, y, poison=lambda info: info.index == 0), grad_scaler=scaler)
    assert torch.equal(flat(model), before)


def test_scaler_step_without_a_closure_says_how_to_use_fp16():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    x, y = make_batches(1)[0]
    with autocast():
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    before = flat(model).clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(RuntimeError, match=r"(?s)SAMMixedPrecision.*step\(closure, grad_scaler=scaler\)"):
            scaler.step(opt)
    assert torch.equal(flat(model), before)


def test_two_step_api_with_a_grad_scaler_matches_the_closure_form():
    batches = make_batches()
    expected = reference_fp16_sam(batches)
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for x, y in batches:
        with autocast():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        opt.first_step(zero_grad=True, grad_scaler=scaler)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        opt.second_step(zero_grad=True, grad_scaler=scaler)
        scaler.update()
    torch.testing.assert_close(flat(model), expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- Lightning
class OrdinaryModule(pl.LightningModule):
    """Knows nothing about SAM except that configure_optimizers returns it."""

    def __init__(self, manual: bool = False) -> None:
        super().__init__()
        self.net = make_mlp()
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.automatic_optimization:
            return F.cross_entropy(self.net(x), y)
        opt = self.optimizers()
        self.manual_backward(F.cross_entropy(self.net(x), y))
        opt.first_step(zero_grad=True)
        self.manual_backward(F.cross_entropy(self.net(x), y))
        opt.second_step(zero_grad=True)

    def configure_optimizers(self):
        return SAM(self.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=0.9)


def fit(module, batches, plugin, **kwargs):
    data = TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    trainer = quiet_trainer(max_epochs=1, plugins=[plugin], **kwargs)
    trainer.fit(module, DataLoader(data, batch_size=32, shuffle=False))
    return trainer


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual two-step"])
def test_lightning_16_mixed_with_sam_mixed_precision_matches_unscaled_fp16_sam(manual):
    batches = make_batches()
    module = OrdinaryModule(manual=manual)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    fit(module, batches, lightning_wass.SAMMixedPrecision("16-mixed", "cpu", scaler=scaler))
    torch.testing.assert_close(flat(module.net), reference_fp16_sam(batches), rtol=1e-4, atol=1e-5)


def test_lightning_16_mixed_gradient_clipping_sees_unscaled_gradients():
    batches = make_batches()
    clipped = OrdinaryModule()
    fit(clipped, batches, lightning_wass.SAMMixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")),
        gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
    free = OrdinaryModule()
    fit(free, batches, lightning_wass.SAMMixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")))
    moved_clipped = (flat(clipped.net) - flat(make_mlp())).norm()
    moved_free = (flat(free.net) - flat(make_mlp())).norm()
    # momentum SGD over 4 steps with every stepped gradient of norm <= 1e-3: at most lr * 1e-3 * (1+1.9+2.71+3.44)
    assert moved_clipped < LR * 1e-3 * 9.1
    assert moved_free > 100 * moved_clipped


def test_lightning_stock_16_mixed_plugin_is_refused_with_the_plugin_to_use():
    batches = make_batches(n_batches=1)
    module = OrdinaryModule()
    before = flat(module.net).clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with pytest.raises(RuntimeError, match=r"SAMMixedPrecision\('16-mixed'"):
            fit(module, batches, MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")))
    assert torch.equal(flat(module.net), before)


def test_sam_mixed_precision_with_bf16_is_plain_mixed_precision():
    batches = make_batches(n_batches=2)
    module = OrdinaryModule()
    fit(module, batches, lightning_wass.SAMMixedPrecision("bf16-mixed", "cpu"))
    assert not torch.equal(flat(module.net), flat(make_mlp()))


def test_two_step_with_a_scaler_and_zero_grad_false_steps_the_unscaled_sum():
    # davda54's zero_grad=False semantics under loss scaling: the step uses g(theta) + g(theta + e), unscaled
    x, y = make_batches(1)[0]

    def scaled_backward(model, scaler, scale=True):
        with autocast():
            loss = F.cross_entropy(model(x), y)
        (scaler.scale(loss) if scale else loss).backward()

    unscaled = make_mlp()
    opt = SAM(unscaled.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    scaled_backward(unscaled, None, scale=False)
    opt.first_step(zero_grad=False)
    scaled_backward(unscaled, None, scale=False)
    opt.second_step(zero_grad=True)

    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled_backward(model, scaler)
    opt.first_step(zero_grad=False, grad_scaler=scaler)
    scaled_backward(model, scaler)
    opt.second_step(zero_grad=True, grad_scaler=scaler)
    scaler.update()
    torch.testing.assert_close(flat(model), flat(unscaled), rtol=1e-4, atol=1e-6)


def test_a_scaler_given_to_second_step_only_is_refused_and_the_step_cancelled():
    x, y = make_batches(1)[0]
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    before = flat(model).clone()
    with autocast():
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    opt.first_step(zero_grad=True)  # forgot the scaler here
    with autocast():
        loss = F.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    with pytest.raises(RuntimeError, match="grad_scaler was given .* but not to the first first_step"):
        opt.second_step(zero_grad=True, grad_scaler=scaler)
    assert torch.equal(flat(model), before)


def test_pure_fp16_parameters_with_large_gradient_norms_are_not_mistaken_for_divergence():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 4).half()
    opt = SAM(layer.parameters(), torch.optim.SGD, rho=RHO, lr=1e-6)
    x = torch.full((8, 4), 100.0, dtype=torch.half)

    def closure():
        opt.zero_grad()
        loss = (layer(x).float() * 50).sum()  # gradients of a few 10^4: the fp16 norm would overflow
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.completed_steps == 1 and torch.isfinite(layer.weight).all()


class ManualTwoStep(OrdinaryModule):
    """Manual optimization, the two-step loop; one step's final pass overflows."""

    def __init__(self) -> None:
        super().__init__(manual=True)
        self.scales: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        self.manual_backward(F.cross_entropy(self.net(x), y))
        opt.first_step(zero_grad=True)
        loss = F.cross_entropy(self.net(x), y)
        self.manual_backward(loss * (float("inf") if batch_idx == 1 else 1.0))
        opt.second_step(zero_grad=True)
        self.scales.append(self.trainer.precision_plugin.scaler.get_scale())


def test_lightning_manual_two_step_under_sam_mixed_precision_updates_the_scale():
    module = ManualTwoStep()
    fit(module, make_batches(), lightning_wass.SAMMixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10)))
    assert module.scales == [2.0**10, 2.0**9, 2.0**9, 2.0**9]  # backed off after the overflow, then steady
    assert module.optimizers().optimizer.completed_steps == 3
