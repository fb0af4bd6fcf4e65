"""The two-step API (davda54/sam's and the official OT-MDR code's loops, unchanged) and the closure
form of davda54's README, against references written from those codes' update rules."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from sam_references import chain_gradient, closure_for, flat, grads_at, loss_fn, make_batches, make_mlp, sam_step, step_with
from torch.utils.data import DataLoader, TensorDataset
from trainers import quiet_trainer

from lightning_wass.optim import OTMDR, SAM

SGD = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def davda54_loop(model, optimizer, batches):
    """davda54/sam's README loop, verbatim but for the names."""
    for inputs, targets in batches:
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.first_step(zero_grad=True)
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.second_step(zero_grad=True)


def test_davda54_loop_runs_unchanged_and_equals_the_reference_and_the_closure_form():
    batches = make_batches()
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), **SGD)
    for x, y in batches:
        sam_step(ref, ref_opt, x, y, rho=0.05)

    two_step = make_mlp()
    davda54_loop(two_step, SAM(two_step.parameters(), torch.optim.SGD, rho=0.05, **SGD), batches)
    torch.testing.assert_close(flat(two_step), flat(ref), rtol=1e-5, atol=1e-6)

    closure_form = make_mlp()
    opt = SAM(closure_form.parameters(), torch.optim.SGD, rho=0.05, **SGD)
    for x, y in batches:
        opt.step(closure_for(closure_form, opt, x, y))
    torch.testing.assert_close(flat(closure_form), flat(two_step), rtol=1e-6, atol=1e-7)
    assert (flat(two_step) - flat(make_mlp())).abs().max() > 1e-3  # it trained


def test_first_step_without_zero_grad_keeps_davda54_semantics():
    # davda54: with zero_grad=False the second backward adds to the first: the step uses g(theta) + g(theta + e)
    x, y = make_batches(1)[0]
    ref = make_mlp()
    g = grads_at(ref, x, y)
    n = torch.sqrt(sum((t**2).sum() for t in g))
    with torch.no_grad():
        for p, t in zip(ref.parameters(), g):
            p.add_(0.05 * t / n)
    g_adv = grads_at(ref, x, y)
    with torch.no_grad():
        for p, t, a, b in zip(ref.parameters(), g, g, g_adv):
            p.sub_(0.05 * t / n)
            p.sub_(0.1 * (a + b))

    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    loss_fn(model, x, y).backward()
    opt.first_step(zero_grad=False)
    loss_fn(model, x, y).backward()
    opt.second_step(zero_grad=False)
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None for p in model.parameters())  # second_step(zero_grad=False) leaves .grad


def test_official_sam_batch_chain_loop_equals_the_official_rule_and_the_chunked_closure_form():
    # train_otmrd.py / train_sambatch_chain: B1 = first half, B2 = second half, final pass on the whole batch
    rho = (0.05, 0.1)
    batches = make_batches(size=20)
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), **SGD)
    for x, y in batches:
        step_with(ref, ref_opt, chain_gradient(ref, [(x[:10], y[:10]), (x[10:], y[10:])], (x, y), rho))

    model = make_mlp()
    optimizer = OTMDR(model.parameters(), torch.optim.SGD, rho=rho, noise_std=0.0, **SGD)
    for inputs, targets in batches:
        F.cross_entropy(model(inputs[:10]), targets[:10]).mean().backward()
        optimizer.first_step(zero_grad=True)
        F.cross_entropy(model(inputs[-10:]), targets[-10:]).mean().backward()
        optimizer.first_step(zero_grad=True)
        F.cross_entropy(model(inputs), targets).mean().backward()
        optimizer.second_step(zero_grad=True)
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)

    closure_form = make_mlp()
    opt = OTMDR(closure_form.parameters(), torch.optim.SGD, rho=rho, noise_std=0.0, chunked_ascent=True, **SGD)
    for x, y in batches:
        opt.step(closure_for(closure_form, opt, x, y, chunks=True))
    torch.testing.assert_close(flat(closure_form), flat(model), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_official_samnchain_loop_with_two_particles_equals_the_official_rule(reduction):
    # train_sambatch_nchain: per particle a fresh permutation, halves B1/B2, final pass on the permuted batch;
    # the official second_step sums the particles' gradients (mode 1); "mean" is mode 1.1
    rho, K = (0.05, 0.1), 2
    batches = make_batches(n_batches=3, size=20)
    perms = [[torch.randperm(20, generator=torch.Generator().manual_seed(10 * b + k)) for k in range(K)] for b in range(3)]
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), **SGD)
    for (x, y), batch_perms in zip(batches, perms):
        finals = []
        for perm in batch_perms:
            xs, ys = x[perm], y[perm]
            finals.append(chain_gradient(ref, [(xs[:10], ys[:10]), (xs[10:], ys[10:])], (xs, ys), rho))
        total = [sum(parts) for parts in zip(*finals)]
        step_with(ref, ref_opt, total if reduction == "sum" else [t / K for t in total])

    model = make_mlp()
    optimizer = OTMDR(model.parameters(), torch.optim.SGD, rho=rho, num_particles=K, noise_std=0.0,
                      particle_reduction=reduction, **SGD)
    for (inputs_full, targets_full), batch_perms in zip(batches, perms):
        for idx_shuffle in batch_perms:
            inputs, targets = inputs_full[idx_shuffle], targets_full[idx_shuffle]
            F.cross_entropy(model(inputs[:10]), targets[:10]).backward()
            optimizer.first_step(zero_grad=True)                       # official first_step(idx_p)
            F.cross_entropy(model(inputs[-10:]), targets[-10:]).backward()
            optimizer.first_step(zero_grad=True)                       # official first_step_grad(idx_p)
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.second_step(zero_grad=True)                      # official save_grad(...); the K-th steps
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)


def test_two_step_and_closure_forms_take_the_same_steps_with_noise_and_particles():
    # same chunks for both (recorded from the closure form), noise drawn from the same seeds
    kwargs = dict(rho=(0.05, 0.1), num_particles=2, noise_std=1e-3, seed=7, **SGD)
    batches = make_batches(n_batches=3, size=24)
    closure_model = make_mlp()
    opt = OTMDR(closure_model.parameters(), torch.optim.SGD, **kwargs)
    used: list[list[torch.Tensor]] = []
    for x, y in batches:
        rows: list[torch.Tensor] = []
        ids = torch.arange(len(x))

        def closure():
            opt.zero_grad()
            xb, yb, ib = opt.current_pass.select(x, y, ids)
            rows.append(ib)
            loss = loss_fn(closure_model, xb, yb)
            loss.backward()
            return loss

        opt.step(closure)
        used.append(rows)

    two_step_model = make_mlp()
    opt2 = OTMDR(two_step_model.parameters(), torch.optim.SGD, **kwargs)
    for (x, y), rows in zip(batches, used):
        # closure passes: [pass 0 = particle 0 chunk 0, chunk 1, final, particle 1 chunk 0, chunk 1, final]
        for k in range(2):
            chunk0, chunk1, final = rows[3 * k : 3 * k + 3]
            loss_fn(two_step_model, x[chunk0], y[chunk0]).backward()
            opt2.first_step(zero_grad=True)
            loss_fn(two_step_model, x[chunk1], y[chunk1]).backward()
            opt2.first_step(zero_grad=True)
            loss_fn(two_step_model, x[final], y[final]).backward()
            opt2.second_step(zero_grad=True)
    torch.testing.assert_close(flat(two_step_model), flat(closure_model), rtol=1e-6, atol=1e-7)
    assert opt2.completed_steps == opt.completed_steps == 3


def test_two_step_freezes_batchnorm_statistics_after_the_first_pass():
    model = make_mlp(batch_norm=True)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = make_batches(1)[0]
    probe = copy.deepcopy(model)
    with torch.no_grad():
        probe(x)
    davda54_loop(model, opt, [(x, y)])
    assert int(model[1].num_batches_tracked) == 1
    torch.testing.assert_close(model[1].running_var, probe[1].running_var)
    model(x)  # after second_step the hook is gone: statistics update again
    assert int(model[1].num_batches_tracked) == 2


def test_out_of_order_two_step_calls_are_refused_and_leave_theta():
    model = make_mlp()
    x, y = make_batches(1)[0]
    theta = flat(model).clone()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    with pytest.raises(RuntimeError, match="without first_step"):
        sam.second_step()
    with pytest.raises(RuntimeError, match="no gradients in .grad"):
        sam.first_step()
    loss_fn(model, x, y).backward()
    sam.first_step(zero_grad=True)
    with pytest.raises(RuntimeError, match="in progress"):
        sam.step(lambda: loss_fn(model, x, y))
    loss_fn(model, x, y).backward()
    with pytest.raises(RuntimeError, match="called 2 times.*ascent_steps=1"):
        sam.first_step()
    assert torch.equal(flat(model), theta)

    chain = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), noise_std=0.0, lr=0.1)
    model.zero_grad()
    loss_fn(model, x, y).backward()
    chain.first_step(zero_grad=True)
    loss_fn(model, x, y).backward()
    with pytest.raises(RuntimeError, match="after 1 of the 2 ascent steps"):
        chain.second_step()
    assert torch.equal(flat(model), theta)
    loss_fn(model, x, y).backward()
    chain.first_step(zero_grad=True)
    assert not torch.equal(flat(model), theta)
    chain.cancel_step()
    assert torch.equal(flat(model), theta)


def test_davda54_readme_closure_form_gives_the_sam_update_and_says_the_backward_is_redundant():
    # README: loss.backward(); optimizer.step(closure) with a closure that does not zero_grad
    batches = make_batches(n_batches=3)
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), **SGD)
    for x, y in batches:
        sam_step(ref, ref_opt, x, y, rho=0.05)

    model = make_mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, **SGD)
    with pytest.warns(UserWarning, match="davda54/sam README form"):
        for inputs, targets in batches:
            def closure():
                loss = F.cross_entropy(model(inputs), targets)
                loss.backward()
                return loss

            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            optimizer.step(closure)
            optimizer.zero_grad()
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)


def test_davda54_readme_closure_form_with_dropout_is_refused_not_doubled():
    torch.manual_seed(3)
    model = make_mlp(dropout=0.3)
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    x, y = make_batches(1)[0]
    theta = flat(model).clone()
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="remove that backward"):
        optimizer.step(lambda: (lambda loss: (loss.backward(), loss)[1])(F.cross_entropy(model(x), y)))
    assert torch.equal(flat(model), theta)


class Davda54LightningRecipe(pl.LightningModule):
    """davda54/sam README's 'Integration with Pytorch Lightning' training_step, verbatim but for one word:
    the recipe predates Lightning 2.0, whose ``manual_backward(loss, *args)`` forwards extra arguments to
    ``Tensor.backward`` (``manual_backward(loss, optimizer)`` fails there for every optimizer), so the
    optimizer argument is dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_mlp()
        self.automatic_optimization = False

    def compute_loss(self, batch):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()

        # first forward-backward pass
        loss_1 = self.compute_loss(batch)
        self.manual_backward(loss_1)
        optimizer.first_step(zero_grad=True)

        # second forward-backward pass
        loss_2 = self.compute_loss(batch)
        self.manual_backward(loss_2)
        optimizer.second_step(zero_grad=True)

        return loss_1

    def configure_optimizers(self):
        return SAM(self.parameters(), torch.optim.SGD, rho=0.05, **SGD)


def test_davda54_lightning_manual_optimization_recipe_runs_unchanged():
    batches = make_batches(n_batches=3)
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), **SGD)
    for x, y in batches:
        sam_step(ref, ref_opt, x, y, rho=0.05)
    module = Davda54LightningRecipe()
    data = TensorDataset(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))
    quiet_trainer(max_epochs=1).fit(module, DataLoader(data, batch_size=32, shuffle=False))
    torch.testing.assert_close(flat(module.net), flat(ref), rtol=1e-5, atol=1e-6)
    assert module.optimizers().optimizer.completed_steps == 3


def test_averaged_chain_direction_is_the_official_mode_1_1():
    # SAM_batch_chain.first_step with mode 1.1: p_grad = (g_0 + ... + g_s) / (s + 1), norm of the current g_s
    rho = (0.05, 0.1)
    x, y = make_batches(1, size=20)[0]
    ref = make_mlp()
    final = chain_gradient(ref, [(x[:10], y[:10]), (x[10:], y[10:])], (x, y), rho, averaged=True)
    step_with(ref, torch.optim.SGD(ref.parameters(), lr=0.1), final)
    summed = make_mlp()
    step_with(summed, torch.optim.SGD(summed.parameters(), lr=0.1),
              chain_gradient(summed, [(x[:10], y[:10]), (x[10:], y[10:])], (x, y), rho))
    assert not torch.allclose(flat(summed), flat(ref))  # the two directions differ: the check means something

    model = make_mlp()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=rho, noise_std=0.0, chain_direction="averaged", lr=0.1)
    for xb, yb in ((x[:10], y[:10]), (x[10:], y[10:])):
        loss_fn(model, xb, yb).backward()
        opt.first_step(zero_grad=True)
    loss_fn(model, x, y).backward()
    opt.second_step(zero_grad=True)
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["closure", "two-step"])
def test_final_passes_freeze_updates_batchnorm_on_the_ascent_passes_as_the_official_code(form):
    # official train_otmrd.py: enable_running_stats before B1 (B1 and B2 update), disable before the final pass
    x, y = make_batches(1, size=20)[0]
    model = make_mlp(batch_norm=True)
    probe = copy.deepcopy(model)
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), noise_std=0.0, chunked_ascent=True,
                freeze_norm_stats="final_passes", lr=0.1)
    if form == "closure":
        opt.step(closure_for(model, opt, x, y, chunks=True))
    else:
        for xb, yb in ((x[:10], y[:10]), (x[10:], y[10:])):
            loss_fn(model, xb, yb).backward()
            opt.first_step(zero_grad=True)
        loss_fn(model, x, y).backward()
        opt.second_step(zero_grad=True)
    assert int(model[1].num_batches_tracked) == 2  # B1 and B2, not the final pass
    with torch.no_grad():  # the statistics the official pattern leaves: B1 at theta, then B2 at theta_1
        probe(x[:10])
    assert not torch.allclose(model[1].running_mean, probe[1].running_mean)  # B2 counted too
    with pytest.raises(ValueError, match="freeze_norm_stats"):
        OTMDR(model.parameters(), torch.optim.SGD, freeze_norm_stats="sometimes", lr=0.1)
