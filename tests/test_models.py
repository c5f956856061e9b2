"""The model factory: every arch builds offline and maps inputs to class logits."""

import pytest
import torch
import torchvision

from gerne_ray.errors import GerneError
from gerne_ray.models import ARCHS, build_model


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_gives_logits_for_images(arch):
    model = build_model(arch, (3, 32, 32), num_classes=7)
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 7)


def test_resnet_adapts_to_other_channel_counts():
    model = build_model("resnet18", (1, 16, 16), num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 16, 16)).shape == (2, 3)


def test_mlp_is_three_hidden_layers_on_flat_inputs():
    model = build_model("mlp", (16,), num_classes=2, hidden=8)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 8), (8, 8), (8, 8), (8, 2)]


@pytest.mark.parametrize(("arch", "shape", "pretrained", "words"), [
    ("cnn", (16,), False, ["model.arch", "image inputs", "mlp"]),
    ("resnet18", (16,), False, ["model.arch", "image inputs"]),
    ("mlp", (16,), True, ["model.pretrained", "false"]),
    ("vgg", (3, 8, 8), False, ["model.arch", "resnet50"]),
])
def test_impossible_models_are_refused_with_the_field(arch, shape, pretrained, words):
    with pytest.raises(GerneError) as info:
        build_model(arch, shape, 2, pretrained=pretrained)
    for word in words:
        assert word in str(info.value)


def test_failed_weight_download_names_the_field(monkeypatch):
    # No test downloads: stand in for torchvision's builder failing as it does offline.
    def offline(weights=None):
        raise OSError("<urlopen error [Errno 101] Network is unreachable>")

    monkeypatch.setattr(torchvision.models, "resnet50", offline)
    with pytest.raises(GerneError, match="model.pretrained.*set model.pretrained: false"):
        build_model("resnet50", (3, 32, 32), 2, pretrained=True)
