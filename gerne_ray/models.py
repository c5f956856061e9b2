"""Model factory: a 3-layer MLP, a small CNN, and ResNet-18/50 from torchvision."""

from __future__ import annotations

import math

from torch import nn

from gerne_ray.errors import GerneError

ARCHS = ("mlp", "cnn", "resnet18", "resnet50")


def mlp(in_features: int, num_classes: int, hidden: int = 100) -> nn.Module:
    """LfF's Colored MNIST MLP: three hidden ReLU layers, then a linear classifier."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def cnn(in_channels: int, num_classes: int, width: int = 32) -> nn.Module:
    """A small CNN: three conv-BatchNorm-ReLU blocks, global average pooling, a linear head."""
    layers: list[nn.Module] = []
    channels = in_channels
    for i, out in enumerate((width, 2 * width, 4 * width)):
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        if i < 2:
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def resnet(depth: int, in_channels: int, num_classes: int, pretrained: bool) -> nn.Module:
    """torchvision's ResNet-18/50 with a new head; ImageNet weights when pretrained."""
    import torchvision

    name = f"resnet{depth}"
    builder = getattr(torchvision.models, name)
    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1 if pretrained else None
    try:
        model = builder(weights=weights)
    except (OSError, RuntimeError) as err:  # urllib errors are OSErrors
        raise GerneError(
            f"model.pretrained: could not load the ImageNet weights of resnet{depth} ({err}); "
            "connect to the internet once (torchvision caches them under $TORCH_HOME) "
            "or set model.pretrained: false"
        ) from err
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def build_model(
    arch: str, input_shape: tuple[int, ...], num_classes: int, pretrained: bool = False,
    hidden: int = 100, name: str = "bert-base-uncased", vocab_size: int | None = None,
) -> nn.Module:
    """The model named by `model.arch` for inputs of `input_shape` and `num_classes` outputs."""
    if arch == "mlp":
        if pretrained:
            raise GerneError("model.pretrained: there are no pretrained weights for mlp; set it false")
        return mlp(math.prod(input_shape), num_classes, hidden)
    if arch not in ARCHS:
        raise GerneError(f"model.arch: unknown arch {arch!r}; use one of: {', '.join(ARCHS)}")
    if len(input_shape) != 3:
        raise GerneError(
            f"model.arch: {arch} needs image inputs (channels, height, width) but the dataset "
            f"gives inputs of shape {input_shape}; use arch: mlp"
        )
    if arch == "cnn":
        if pretrained:
            raise GerneError("model.pretrained: there are no pretrained weights for cnn; set it false")
        return cnn(input_shape[0], num_classes)
    return resnet(int(arch.removeprefix("resnet")), input_shape[0], num_classes, pretrained)
