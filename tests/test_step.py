"""The GERNE step's gradient, exactly, in float64."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gerne_ray.step import (
    concat_batches,
    extrapolated_loss,
    gerne_losses,
    has_batch_statistics,
    split_batch_statistics,
    weighted_loss,
)


def _model(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if batchnorm else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def _batches(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x_b = torch.randn(12, 6, generator=g, dtype=torch.float64)
    x_lb = torch.randn(9, 6, generator=g, dtype=torch.float64)
    y_b, y_lb = torch.randint(0, 3, (12,), generator=g), torch.randint(0, 3, (9,), generator=g)
    return x_b, y_b, x_lb, y_lb


def _grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("beta", [-1.0, -0.3, 0.0, 0.7, 1.22, 2.5])
@pytest.mark.parametrize("forward", ["two", "concat"])
def test_one_backward_equals_extrapolated_gradients(beta, forward):
    model = _model()
    x_b, y_b, x_lb, y_lb = _batches()
    g_b = _grad(model, F.cross_entropy(model(x_b), y_b))
    g_lb = _grad(model, F.cross_entropy(model(x_lb), y_lb))
    g_ext = _grad(model, gerne_losses(model, x_b, y_b, x_lb, y_lb, beta, forward).loss)
    assert _rel(g_ext, g_lb + beta * (g_lb - g_b)) < 1e-10


def test_beta_minus_one_is_erm_on_the_biased_batch():
    model = _model()
    x_b, y_b, x_lb, y_lb = _batches()
    g_erm = _grad(model, F.cross_entropy(model(x_b), y_b))
    g = _grad(model, gerne_losses(model, x_b, y_b, x_lb, y_lb, -1.0).loss)
    assert _rel(g, g_erm) < 1e-10


def test_c_one_beta_zero_is_the_gradient_on_the_group_balanced_batch():
    # With c = 1 the less-biased batch is group-balanced; beta = 0 keeps only its loss.
    model = _model()
    x_b, y_b, x_lb, y_lb = _batches()
    g_bal = _grad(model, F.cross_entropy(model(x_lb), y_lb))
    g = _grad(model, gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.0).loss)
    assert _rel(g, g_bal) < 1e-10


def test_concat_and_two_forwards_agree_without_batchnorm():
    model = _model()
    assert not has_batch_statistics(model)
    x_b, y_b, x_lb, y_lb = _batches()
    two = gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.8, "two")
    g_two = _grad(model, two.loss)
    concat = gerne_losses(model, x_b, y_b, x_lb, y_lb, 0.8, "concat")
    g_concat = _grad(model, concat.loss)
    assert torch.allclose(two.loss_b, concat.loss_b, rtol=1e-12)
    assert torch.allclose(two.loss_lb, concat.loss_lb, rtol=1e-12)
    assert _rel(g_concat, g_two) < 1e-10


def _conv_bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5, momentum=None), nn.ReLU(),  # cumulative average
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3),
    ).double()


def _image_batches(n_b: int, n_lb: int, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    x_b = torch.randn(n_b, 2, 5, 5, generator=g, dtype=torch.float64)
    x_lb = 2.0 * torch.randn(n_lb, 2, 5, 5, generator=g, dtype=torch.float64) + 1.5
    y_b, y_lb = torch.randint(0, 3, (n_b,), generator=g), torch.randint(0, 3, (n_lb,), generator=g)
    return x_b, y_b, x_lb, y_lb


def _bn_cases():
    x_b, y_b, x_lb, y_lb = _batches()
    yield "bn1d", lambda: _model(batchnorm=True), (x_b, y_b, x_lb + 3.0, y_lb)  # 12 vs 9 samples
    yield "bn2d", _conv_bn_model, _image_batches(8, 8)
    yield "bn2d-unequal", _conv_bn_model, _image_batches(10, 5)


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def _run(base: nn.Module, batches, forward: str, beta: float = 0.7):
    model = copy.deepcopy(base)
    for _ in range(2):  # twice: the second step starts from running stats the first one updated
        out = gerne_losses(model, *batches, beta, forward)
    return out, _grad(model, out.loss), _bn_state(model), model


@pytest.mark.parametrize("make, batches", [c[1:] for c in _bn_cases()], ids=[c[0] for c in _bn_cases()])
def test_split_bn_equals_two_forwards_in_losses_gradient_and_running_stats(make, batches):
    base = make()
    assert has_batch_statistics(base)
    two, g_two, bn_two, _ = _run(base, batches, "two")
    concat, g_concat, bn_concat, _ = _run(base, batches, "concat")
    for forward in ("split_bn", "auto"):
        split, g_split, bn_split, model = _run(base, batches, forward)
        assert _rel(split.loss_b, two.loss_b) < 1e-10
        assert _rel(split.loss_lb, two.loss_lb) < 1e-10
        assert _rel(g_split, g_two) < 1e-10
        assert bn_split.keys() == bn_two.keys() and len(bn_two) >= 3
        for k in bn_two:
            if k.endswith("num_batches_tracked"):
                assert torch.equal(bn_split[k], bn_two[k]) and int(bn_two[k]) == 4, k
            else:
                assert _rel(bn_split[k], bn_two[k]) < 1e-10, k
        assert model.state_dict().keys() == base.state_dict().keys()
    # the check can fail: one plain forward over the concatenation mixes the statistics
    assert _rel(concat.loss_lb, two.loss_lb) > 1e-3
    assert _rel(g_concat, g_two) > 1e-3
    assert any(_rel(bn_concat[k], bn_two[k]) > 1e-3 for k in bn_two if "running_mean" in k)


def test_split_batch_statistics_restores_plain_batchnorm_on_exit():
    model = _conv_bn_model()
    x_b, y_b, x_lb, y_lb = _image_batches(6, 4)
    x = torch.cat([x_b, x_lb])
    reference = copy.deepcopy(model)
    with split_batch_statistics(model, [6, 4]):
        split_out = model(x)
    assert not any("forward" in vars(m) for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert _rel(split_out, reference(x)) > 1e-3  # the context did split
    assert _rel(split_out[:6], reference(x_b)) < 1e-10
    # back to normal BatchNorm: a batch is normalised by its own, whole-batch statistics ...
    assert _rel(model(x), reference(x)) < 1e-12
    # ... and the running statistics take one update from that whole batch
    bn, conv = model[1], model[0]
    mean_before, var_before = bn.running_mean.clone(), bn.running_var.clone()
    model(x)
    h = conv(x).detach()
    assert _rel(bn.running_mean, 0.9 * mean_before + 0.1 * h.mean((0, 2, 3))) < 1e-12
    assert _rel(bn.running_var, 0.9 * var_before + 0.1 * h.var((0, 2, 3), unbiased=True)) < 1e-12


def test_split_batch_statistics_restores_on_exception_and_rejects_a_wrong_batch_size():
    model = _model(batchnorm=True)
    x_b, _, x_lb, _ = _batches()
    with pytest.raises(ValueError, match="add up to 21"):
        with split_batch_statistics(model, [len(x_b), len(x_lb)]):
            model(x_b)
    assert not any("forward" in vars(m) for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with split_batch_statistics(model, [len(x_b), len(x_lb)]):
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in model.modules())
    reference = _model(batchnorm=True)
    assert _rel(model(x_b), reference(x_b)) < 1e-12


def test_split_batch_statistics_leaves_eval_mode_alone():
    model = _conv_bn_model()
    _run(model, _image_batches(6, 6), "two")  # give the running stats non-default values
    model.eval()
    before = _bn_state(model)
    x_b, _, x_lb, _ = _image_batches(6, 4)
    x = torch.cat([x_b, x_lb])
    expected = model(x)
    with split_batch_statistics(model, [6, 4]):
        out = model(x)
    assert torch.equal(out, expected)
    assert all(torch.equal(v, before[k]) for k, v in _bn_state(model).items())
    # auto on an eval-mode BatchNorm model is one plain forward with the running statistics
    assert torch.equal(gerne_losses(model, *_image_batches(6, 4), 0.5).loss,
                       gerne_losses(model, *_image_batches(6, 4), 0.5, "concat").loss)


def test_split_batch_statistics_reaches_batchnorm_inside_a_wrapper():
    inner = _conv_bn_model()
    wrapper = nn.Sequential(nn.Identity(), nn.Sequential(inner))  # as DDP: the model in .modules()
    x_b, y_b, x_lb, y_lb = _image_batches(5, 7)
    split = gerne_losses(copy.deepcopy(wrapper), x_b, y_b, x_lb, y_lb, 0.5, "split_bn")
    two = gerne_losses(copy.deepcopy(wrapper), x_b, y_b, x_lb, y_lb, 0.5, "two")
    assert _rel(split.loss, two.loss) < 1e-10


def test_concat_batches_is_a_view_of_adjacent_batches_and_a_copy_otherwise():
    x = torch.randn(10, 3, 2, 2, dtype=torch.float64)
    view = concat_batches(x[:4], x[4:9])
    assert torch.equal(view, x[:9]) and view.data_ptr() == x.data_ptr()
    view = concat_batches(x[1:2], x[2:7])  # one-sample batch, offset start
    assert torch.equal(view, x[1:7]) and view.data_ptr() == x[1].data_ptr()
    for a, b in [(x[:4], x[5:9]), (x[4:9], x[:4]), (x[:4], torch.randn(3, 3, 2, 2, dtype=torch.float64)),
                 (x[:4, :2], x[4:8, :2]), (x[:4], x[4:8].float().double())]:
        out = concat_batches(a, b)
        assert torch.equal(out, torch.cat([a, b])) and out.data_ptr() != x.data_ptr()
    # gradients still reach inputs that need them (the copy path)
    leaf = x.clone().requires_grad_()
    concat_batches(leaf[:4], leaf[4:]).sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(x))


def test_unknown_forward_is_rejected():
    model = _model()
    with pytest.raises(ValueError, match="split_bn"):
        gerne_losses(model, *_batches(), 0.5, "ghost")


def test_batchnorm_models_keep_their_own_statistics():
    model = _model(batchnorm=True)
    assert has_batch_statistics(model)
    x_b, y_b, x_lb, y_lb = _batches()
    x_lb = x_lb + 3.0  # a shifted batch: mixing the statistics would change the loss
    auto = gerne_losses(copy.deepcopy(model), x_b, y_b, x_lb, y_lb, 0.5, "auto")
    two = gerne_losses(copy.deepcopy(model), x_b, y_b, x_lb, y_lb, 0.5, "two")
    concat = gerne_losses(copy.deepcopy(model), x_b, y_b, x_lb, y_lb, 0.5, "concat")
    assert _rel(auto.loss, two.loss) < 1e-12
    assert not torch.allclose(auto.loss, concat.loss)
    # each batch is normalised by its own statistics: the loss on B_b alone equals L_b
    assert torch.allclose(auto.loss_b, F.cross_entropy(model(x_b), y_b), rtol=1e-12)


def test_extrapolated_loss_formula():
    lb, llb = torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    assert float(extrapolated_loss(lb, llb, 1.5)) == pytest.approx(2.5 * 0.5 - 1.5 * 2.0)


def test_weighted_loss_is_the_mean_of_weighted_sample_losses():
    model = _model()
    x, y, _, _ = _batches()
    w = torch.linspace(0.0, 2.0, len(y), dtype=torch.float64)
    expected = (F.cross_entropy(model(x), y, reduction="none") * w).mean()
    assert torch.allclose(weighted_loss(model, x, y, w).loss, expected, rtol=1e-12)
    assert torch.allclose(weighted_loss(model, x, y).loss, F.cross_entropy(model(x), y), rtol=1e-12)
