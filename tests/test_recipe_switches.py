"""The successors' recipe switches against hand-written references: weight decay on kernels only, the projector's
last-layer bias, each view forwarded alone."""

import copy

import pytest
import torch
from torch import nn

from conftest import tiny_method_config as tiny
from invaspread.engine.step import build_optimizer
from invaspread.methods import build_method
from invaspread.models import build_model


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5))


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_one_sgd_step_decays_every_parameter_or_only_kernels_and_matrices(decay_norm_and_bias):
    cfg = tiny("invaspread", [f"optim.decay_norm_and_bias={str(decay_norm_and_bias).lower()}",
                              "optim.weight_decay=0.1", "optim.momentum=0.9"])
    net = small_net()
    for p in net.parameters():   # BatchNorm starts at weight 1, bias 0: move them off so decay shows
        p.data.add_(torch.randn_like(p) * 0.3)
    before = copy.deepcopy(net)
    net(torch.randn(2, 3, 6, 6)).square().sum().backward()
    grads = [p.grad.double().clone() for p in net.parameters()]
    build_optimizer(net.parameters(), cfg.optim).step()
    lr, wd = cfg.optim.lr, cfg.optim.weight_decay
    for (name, p0), p1, g in zip(before.named_parameters(), net.parameters(), grads):
        decayed = decay_norm_and_bias or p0.dim() > 1
        # the first SGD step with momentum: the buffer is the gradient plus the decay term itself
        expected = p0.double() - lr * (g + (wd * p0.double() if decayed else 0))
        torch.testing.assert_close(p1.double(), expected, rtol=1e-6, atol=1e-7, msg=name)


def test_without_decay_on_vectors_each_method_group_is_split_keeping_its_own_settings():
    cfg = tiny("byol", ["optim.decay_norm_and_bias=false", "method.byol.predictor_lr_scale=10"])
    method = build_method(cfg, build_model(cfg.model), 16)
    groups = build_optimizer(method.parameter_groups(), cfg.optim).param_groups
    assert [(g.get("lr_scale", 1.0), g["weight_decay"]) for g in groups] == [
        (1.0, cfg.optim.weight_decay), (1.0, 0.0), (10, cfg.optim.weight_decay), (10, 0.0)]
    assert all(p.dim() > 1 for p in groups[0]["params"] + groups[2]["params"])
    assert all(p.dim() == 1 for p in groups[1]["params"] + groups[3]["params"])
    trained = [p for p in method.parameters() if p.requires_grad]
    assert sorted(map(id, (p for g in groups for p in g["params"]))) == sorted(map(id, trained))
    default = build_optimizer(method.parameter_groups(), tiny("byol", ["method.byol.predictor_lr_scale=10"]).optim)
    assert len(default.param_groups) == 2    # the switch's default leaves the method's groups as they are


@pytest.mark.parametrize("kind", ["linear", "mlp", "mlp_bn"])
def test_the_heads_last_layer_without_bias_computes_x_times_w_only(kind):
    cfg = tiny("simclr", [f"model.head={kind}", "model.head_last_bias=false"])
    head = build_model(cfg.model).head.eval()
    last = head if kind == "linear" else head[-1]
    assert last.bias is None
    x = torch.randn(4, 64, dtype=torch.float64)
    hidden = x if kind == "linear" else head[:-1].double()(x)
    torch.testing.assert_close(head.double()(x), hidden @ last.weight.double().t())
    with_bias = build_model(tiny("simclr", [f"model.head={kind}"]).model).head
    assert (with_bias if kind == "linear" else with_bias[-1]).bias is not None      # the default keeps it


def test_byol_predictor_without_last_bias():
    cfg = tiny("byol", ["method.byol.predictor_last_bias=false"])
    assert build_method(cfg, build_model(cfg.model), 16).predictor[-1].bias is None
    assert build_method(tiny("byol"), build_model(cfg.model), 16).predictor[-1].bias is not None


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_separate_views_forward_each_view_alone_in_train_mode(name):
    cfg = tiny(name, [f"method.{name}.separate_views=true"])
    method = build_method(cfg, build_model(cfg.model), 16).train()
    reference = copy.deepcopy(method.encoder).train()
    views = torch.randn(2, 8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = method.embed(views)
        alone = torch.stack([reference(views[0]), reference(views[1])])
        together = reference(views.flatten(0, 1)).view(2, 8, -1)
    torch.testing.assert_close(out, alone)
    assert not torch.allclose(out, together, atol=1e-4)    # BatchNorm's batch statistics differ per view
