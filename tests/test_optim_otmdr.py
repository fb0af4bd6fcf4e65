"""OTMDR / SAM as plain torch.optim optimizers: the math against hand-written references."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sam_references import flat, grads_at, loss_fn, make_mlp, sam_step
from sam_references import make_batches as shared_batches

from lightning_wass import DivergenceError
from lightning_wass.optim import OTMDR, SAM


def make_batches(n_batches: int = 6, size: int = 32, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return shared_batches(n_batches, size, seed)


def run_ours(model, opt, batches, chunk_aware=False):
    losses = []
    for x, y in batches:
        def closure():
            opt.zero_grad()
            xb, yb = opt.current_pass.select(x, y) if chunk_aware else (x, y)
            loss = loss_fn(model, xb, yb)
            loss.backward()
            return loss

        losses.append(float(opt.step(closure).detach()))
    return losses


@pytest.mark.parametrize(
    "base, kwargs",
    [
        (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)),
        (torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-4)),
    ],
)
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_and_one_particle_otmdr_follow_the_reference_sam_trajectory(base, kwargs, adaptive):
    rho = 0.5 if adaptive else 0.05
    batches = make_batches()
    ref = make_mlp()
    ref_opt = base(ref.parameters(), **kwargs)
    for x, y in batches:
        sam_step(ref, ref_opt, x, y, rho, adaptive)

    for build in (
        lambda m: SAM(m.parameters(), base, rho=rho, adaptive=adaptive, **kwargs),
        lambda m: OTMDR(m.parameters(), base, rho=rho, num_particles=1, ascent_steps=1, noise_std=0.0, adaptive=adaptive, **kwargs),
    ):
        model = make_mlp()
        run_ours(model, build(model), batches)
        torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)
    # the perturbation matters: plain base steps end elsewhere
    plain = make_mlp()
    plain_opt = base(plain.parameters(), **kwargs)
    for x, y in batches:
        grads_at(plain, x, y)
        plain_opt.step()
    assert (flat(plain) - flat(ref)).abs().max() > 1e-4


@pytest.mark.parametrize("direction", ["summed", "current"])
def test_chained_ascent_on_batch_halves_matches_the_official_formula(direction):
    # DESIGN 3.2: theta1 = theta0 + rho1 g1/||g1|| (g1 on B1 at theta0);
    # theta2 = theta1 + rho2 d/||g2|| (g2 on B2 at theta1; d = g1 + g2 summed, g2 current);
    # the full-batch gradient at theta2 is applied at theta0 by the base optimizer.
    rho = (0.05, 0.1)
    batches = make_batches(n_batches=4, size=20)
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        params = list(ref.parameters())
        theta0 = [p.detach().clone() for p in params]
        g1 = grads_at(ref, x[:10], y[:10])
        with torch.no_grad():
            n1 = torch.sqrt(sum((g**2).sum() for g in g1))
            for p, g in zip(params, g1):
                p.add_(rho[0] * g / n1)
        g2 = grads_at(ref, x[10:], y[10:])
        with torch.no_grad():
            n2 = torch.sqrt(sum((g**2).sum() for g in g2))
            for p, a, b in zip(params, g1, g2):
                p.add_(rho[1] * ((a + b) if direction == "summed" else b) / n2)
        g_final = grads_at(ref, x, y)
        with torch.no_grad():
            for p, t0, g in zip(params, theta0, g_final):
                p.copy_(t0)
                p.grad = g
        ref_opt.step()

    model = make_mlp()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=rho, noise_std=0.0, chunked_ascent=True,
                chain_direction=direction, lr=0.1, momentum=0.9)
    assert opt.ascent_steps == 2
    run_ours(model, opt, batches, chunk_aware=True)
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)


def test_particles_average_the_final_gradients_and_noise_has_the_requested_std():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 50), nn.Tanh(), nn.Linear(50, 3))
    x, y = torch.randn(64, 40), torch.randint(0, 3, (64,))
    sigma, K = 0.01, 3
    theta0 = flat(model).clone()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=0.0, ascent_steps=2, num_particles=K, noise_std=sigma, lr=0.5)
    final_points = []

    def closure():
        opt.zero_grad()
        xb, yb = opt.current_pass.select(x, y)  # each particle ascends on its own chunks
        if opt.current_pass.is_final:
            final_points.append(flat(model).clone())
        loss = loss_fn(model, xb, yb)
        loss.backward()
        return loss

    opt.step(closure)
    assert len(final_points) == K
    offsets = torch.stack(final_points) - theta0
    # rho = 0: each particle is theta0 + sigma * (xi_1 + xi_2) with fresh standard-normal draws: std sigma sqrt(2)
    assert offsets.std(dim=1).sub(sigma * math.sqrt(2)).abs().max() < 0.05 * sigma
    assert offsets.mean(dim=1).abs().max() < 0.1 * sigma
    assert torch.corrcoef(offsets)[0, 1].abs() < 0.1  # independent draws per particle
    # the step is the base SGD step at theta0 with the mean of the gradients at those points
    probe = copy.deepcopy(model)
    mean_grad = torch.zeros_like(theta0)
    for point in final_points:
        torch.nn.utils.vector_to_parameters(point, probe.parameters())
        mean_grad += torch.cat([g.reshape(-1) for g in grads_at(probe, x, y)]) / K
    torch.testing.assert_close(flat(model), theta0 - 0.5 * mean_grad, rtol=1e-5, atol=1e-6)


def test_resumed_run_equals_uninterrupted_run_including_noise_and_momentum(tmp_path):
    batches = make_batches(n_batches=6)
    kwargs = dict(rho=(0.05, 0.1), num_particles=2, noise_std=1e-3, lr=0.1, momentum=0.9, seed=3)
    full = make_mlp()
    full_opt = OTMDR(full.parameters(), torch.optim.SGD, **kwargs)
    run_ours(full, full_opt, batches, chunk_aware=True)

    first = make_mlp()
    first_opt = OTMDR(first.parameters(), torch.optim.SGD, **kwargs)
    run_ours(first, first_opt, batches[:3], chunk_aware=True)
    state = first_opt.state_dict()
    assert "momentum_buffer" in state["state"][0]  # the base optimizer's state is in the checkpoint
    torch.save({"model": first.state_dict(), "opt": state}, tmp_path / "ckpt.pt")

    ckpt = torch.load(tmp_path / "ckpt.pt")
    resumed = make_mlp(seed=99)
    resumed.load_state_dict(ckpt["model"])
    resumed_opt = OTMDR(resumed.parameters(), torch.optim.SGD, **{**kwargs, "lr": 7.0})
    resumed_opt.load_state_dict(ckpt["opt"])
    assert resumed_opt.base_optimizer.param_groups[0]["lr"] == 0.1
    assert resumed_opt.base_optimizer.state is resumed_opt.state
    run_ours(resumed, resumed_opt, batches[3:], chunk_aware=True)
    torch.testing.assert_close(flat(resumed), flat(full), rtol=0, atol=0)


def test_batchnorm_running_stats_come_from_the_first_pass_only():
    model = make_mlp(batch_norm=True)
    x, y = make_batches(1)[0]
    probe = copy.deepcopy(model)
    probe.train()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.5, 0.5), num_particles=2, noise_std=0.1, lr=0.1)
    calls, first_rows = [], []

    def closure():
        opt.zero_grad()
        calls.append(opt.current_pass.index)
        xb, yb = opt.current_pass.select(x, y)
        if opt.current_pass.index == 0:
            first_rows.append(xb)
        loss = loss_fn(model, xb, yb)
        loss.backward()
        return loss

    opt.step(closure)
    assert calls == [0, 1, 2, 3, 4, 5]  # per particle: S chunked ascent passes + 1 final pass
    with torch.no_grad():
        probe(first_rows[0])  # one unperturbed training-mode forward of what pass 0 saw: what the stats should be
    bn, ref = model[1], probe[1]
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1
    # without freezing, the perturbed passes move them
    unfrozen = make_mlp(batch_norm=True)
    opt2 = OTMDR(unfrozen.parameters(), torch.optim.SGD, rho=(0.5, 0.5), num_particles=2, noise_std=0.1, lr=0.1,
                 freeze_norm_stats=False)
    model = unfrozen
    opt = opt2
    opt2.step(closure)
    assert int(unfrozen[1].num_batches_tracked) == 6
    assert (unfrozen[1].running_var - ref.running_var).abs().max() > 1e-4


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(rho=-0.1), ValueError, "rho"),
        (dict(rho=(0.05, -1.0)), ValueError, "rho[1]"),
        (dict(rho=(0.05, 0.1), ascent_steps=3), ValueError, "ascent_steps"),
        (dict(num_particles=0), ValueError, "num_particles"),
        (dict(ascent_steps=0), ValueError, "ascent_steps"),
        (dict(noise_std=-1e-3), ValueError, "noise_std"),
        (dict(rho="big"), TypeError, "rho"),
        (dict(chain_direction="sideways"), ValueError, "chain_direction"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, words):
    model = make_mlp()
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        OTMDR(model.parameters(), torch.optim.SGD, lr=0.1, **kwargs)


def test_base_optimizer_must_be_an_optimizer_class():
    model = make_mlp()
    for bad in (nn.Linear, 3, torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.LBFGS, SAM):
        with pytest.raises(TypeError, match="base_optimizer"):
            OTMDR(model.parameters(), bad, lr=0.1)
    with pytest.raises(TypeError, match="base_optimizer"):
        OTMDR(model.parameters(), lambda groups, **kw: "not an optimizer")


def test_closure_must_return_the_loss_and_be_given():
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    x, y = make_batches(1)[0]

    def no_loss():
        opt.zero_grad()
        loss_fn(model, x, y).backward()

    with pytest.raises(TypeError, match="closure returned None"):
        opt.step(no_loss)
    with pytest.raises(RuntimeError, match="first_step\\(\\) and second_step\\(\\)"):
        opt.step()
    with pytest.raises(TypeError, match="closure"):
        opt.step("not callable")
    with pytest.raises(RuntimeError, match="no gradients"):
        opt.step(lambda: loss_fn(model, x, y))  # forgot backward()


@pytest.mark.parametrize("where", ["loss", "gradient", "perturbed loss"])
def test_non_finite_values_stop_the_step_and_leave_parameters_unchanged(where):
    model = make_mlp()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), lr=0.1, momentum=0.9)
    x, y = make_batches(1)[0]
    run_ours(model, opt, [(x, y)])  # one good step: momentum exists
    before = flat(model).clone()
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    handle = None
    if where == "gradient":
        handle = next(model.parameters()).register_hook(lambda g: g * float("nan"))

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        if where == "loss" or (where == "perturbed loss" and opt.current_pass.perturbed):
            loss = loss * float("nan")
        loss.backward()
        return loss

    with pytest.raises(DivergenceError, match="OTMDR step 2") as info:
        opt.step(closure)
    expected = {"loss": "the loss of pass 0", "gradient": "gradient", "perturbed loss": "the loss of pass 1"}[where]
    assert expected in str(info.value)
    if handle is not None:
        handle.remove()
    assert torch.equal(flat(model), before)
    for p, m in zip(model.parameters(), momentum):
        assert torch.equal(opt.state[p]["momentum_buffer"], m)


def test_plain_pytorch_loop_trains_a_classifier_on_real_digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.02, 0.02), num_particles=2, noise_std=1e-4,
                lr=0.1, momentum=0.9)
    for epoch in range(6):
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]

            def closure():
                opt.zero_grad()
                xb, yb = opt.current_pass.select(x[idx], y[idx])
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()
                return loss

            opt.step(closure)
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    assert acc > 0.93


def test_closure_over_micro_batches_gives_full_batch_sam():
    # gradient accumulation in a plain loop: the closure accumulates the micro-batches itself
    x, y = make_batches(1, size=48)[0]
    ref = make_mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    sam_step(ref, ref_opt, x, y, 0.05)

    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)

    def closure():
        opt.zero_grad()
        total = 0.0
        for xb, yb in zip(x.chunk(3), y.chunk(3)):
            loss = F.cross_entropy(model(xb), yb, reduction="sum") / len(x)
            loss.backward()
            total += loss.detach()
        return total

    opt.step(closure)
    torch.testing.assert_close(flat(model), flat(ref), rtol=1e-5, atol=1e-6)


def test_plain_loop_gradients_of_other_micro_batches_before_step_are_refused_not_guessed():
    # a plain loop that back-propagates micro-batch 1 and then calls step with a closure for micro-batch 2
    # that does not clear: accumulation or a repeated backward? The step refuses, says what to change,
    # and leaves the parameters and the gradients as they were.
    (x1, y1), (x2, y2) = make_batches(2, size=16)
    model = make_mlp()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    loss_fn(model, x1, y1).backward()
    before = flat(model).clone()

    def closure():  # no zero_grad
        loss = loss_fn(model, x2, y2)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="(?s)davda54.*remove that backward.*accumulate them inside the closure"):
        opt.step(closure)
    assert torch.equal(flat(model), before)


def test_chunked_ascent_with_a_closure_that_ignores_chunks_warns_for_one_particle_and_refuses_several():
    model = make_mlp()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), noise_std=0.0, chunked_ascent=True, lr=0.1)
    reference = make_mlp()
    ref_opt = OTMDR(reference.parameters(), torch.optim.SGD, rho=(0.05, 0.1), noise_std=0.0, lr=0.1)
    batches = make_batches(2)
    with pytest.warns(UserWarning, match="select"):
        run_ours(model, opt, batches)
    run_ours(reference, ref_opt, batches)
    torch.testing.assert_close(flat(model), flat(reference))
    # with K > 1 the K chains would be copies of one: refused, parameters untouched
    several = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), num_particles=2, lr=0.1)
    before = flat(model).clone()
    with pytest.raises(RuntimeError, match="(?s)num_particles=2.*same\\s+gradient.*current_pass.select"):
        run_ours(model, several, batches[:1])
    assert torch.equal(flat(model), before)


def test_particles_that_would_be_identical_are_refused_at_construction():
    model = make_mlp()
    with pytest.raises(ValueError, match="(?s)num_particles=2 with chunked_ascent=False.*differ only by the noise"):
        OTMDR(model.parameters(), torch.optim.SGD, num_particles=2, chunked_ascent=False, lr=0.1)
    with pytest.raises(ValueError, match="num_particles=3 with ascent_steps=1"):
        OTMDR(model.parameters(), torch.optim.SGD, rho=0.05, num_particles=3, lr=0.1)
    assert OTMDR(model.parameters(), torch.optim.SGD, num_particles=2, lr=0.1).chunked_ascent is True
    assert OTMDR(model.parameters(), torch.optim.SGD, lr=0.1).chunked_ascent is False


def test_chunks_partition_the_batch_and_differ_between_particles():
    model = make_mlp()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1, 0.1), num_particles=2, chunked_ascent=True, lr=0.1)
    x, y = make_batches(1, size=31)[0]
    seen: dict[tuple[int, int | None], torch.Tensor] = {}
    ids = torch.arange(31)

    def closure():
        opt.zero_grad()
        info = opt.current_pass
        xb, yb, ib = info.select(x, y, ids)
        seen[(info.particle, info.ascent_step)] = ib
        loss = loss_fn(model, xb, yb)
        loss.backward()
        return loss

    opt.step(closure)
    for k in range(2):
        parts = [seen[(k, s)] for s in range(3)]
        assert sorted(torch.cat(parts).tolist()) == list(range(31))  # disjoint chunks covering the batch
        assert torch.equal(seen[(k, None)], ids)  # final pass: the whole batch
    assert not torch.equal(seen[(0, 0)], seen[(1, 0)])


def test_groups_with_perturb_false_are_stepped_but_not_perturbed():
    model = make_mlp()
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]
    opt = OTMDR([{"params": first, "perturb": False}, {"params": rest}], torch.optim.SGD, rho=0.3, ascent_steps=1,
                noise_std=0.0, lr=0.1)
    x, y = make_batches(1)[0]
    before = [p.detach().clone() for p in model.parameters()]
    moved = []

    def closure():
        opt.zero_grad()
        if opt.current_pass.perturbed:
            moved.append([not torch.equal(p, b) for p, b in zip(model.parameters(), before)])
        loss = loss_fn(model, x, y)
        loss.backward()
        return loss

    opt.step(closure)
    assert moved == [[False, False] + [True] * (len(before) - 2)]
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))  # all stepped


def test_aliased_gradient_buffers_are_detected():
    # DDP(gradient_as_bucket_view=True) hands every pass the same gradient memory
    model = make_mlp()
    buffers = [torch.zeros_like(p) for p in model.parameters()]
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=(0.05, 0.1), lr=0.1)
    x, y = make_batches(1)[0]

    def closure():
        loss = loss_fn(model, x, y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for p, b, g in zip(model.parameters(), buffers, grads):
            b.copy_(g)
            p.grad = b
        return loss

    with pytest.raises(RuntimeError, match="gradient_as_bucket_view"):
        opt.step(closure)


def test_scheduler_and_param_group_hyperparameters_are_shared_with_the_base_optimizer():
    model = make_mlp()
    opt = OTMDR(model.parameters(), torch.optim.SGD, rho=0.05, ascent_steps=1, lr=1.0, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    run_ours(model, opt, make_batches(1))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.5)
    assert opt.param_groups[0]["rho"] == 0.05 and opt.param_groups[0]["rho_fractions"] == (1.0,)
    assert math.isclose(opt.defaults["momentum"], 0.9)


def test_instance_norm_running_stats_are_restored_too():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.InstanceNorm1d(4, track_running_stats=True), nn.Flatten(), nn.Linear(24, 3))
    x, y = torch.randn(8, 2, 8), torch.randint(0, 3, (8,))
    probe = copy.deepcopy(model)
    with torch.no_grad():
        probe(x)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(model[1].running_mean, probe[1].running_mean)
    torch.testing.assert_close(model[1].running_var, probe[1].running_var)


def test_a_batch_smaller_than_the_number_of_chunks_is_used_whole():
    from lightning_wass.optim import PassInfo

    info = PassInfo(index=1, particle=0, ascent_step=1, perturbed=True, chunk=1, num_chunks=3)
    x = torch.arange(2)
    assert torch.equal(info.select(x), x)
    assert torch.equal(info.select(torch.arange(7)), torch.tensor([3, 4]))  # tensor_split: 3, 2, 2
