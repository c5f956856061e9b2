"""Model factory: a 3-layer MLP, a small CNN, ResNet-18/50 from torchvision, and BERT for text."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gerne_ray.errors import GerneError

log = logging.getLogger(__name__)
ARCHS = ("mlp", "cnn", "resnet18", "resnet50")  # the archs for image (and flat) inputs
TEXT_ARCHS = ("bert",)  # the archs for token ids (batch, max_length) from a text dataset


# What an allocation failure says: torch's CPU allocator ("not enough memory", "can't allocate memory"),
# CUDA ("out of memory", torch.OutOfMemoryError), numpy ("Unable to allocate", a MemoryError)
_ALLOCATION_WORDS = ("not enough memory", "can't allocate memory", "out of memory", "unable to allocate")


def is_allocation_failure(err: BaseException) -> bool:
    """Whether err says that memory could not be allocated (host or accelerator)."""
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(w in text for w in _ALLOCATION_WORDS)


@contextmanager
def allocation_failures_as(field: str, fix: str) -> Iterator[None]:
    """Turn an allocation failure inside into a GerneError: `field: ... ran out of memory (...); fix`."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not is_allocation_failure(err):
            raise
        said = (str(err).strip().splitlines() or [type(err).__name__])[-1][:200]
        raise GerneError(f"{field}: ran out of memory ({said}); {fix}") from None


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


class TextClassifier(nn.Module):
    """A Hugging Face sequence classifier taking only token ids: forward(ids (B, L) long) -> logits (B, K).

    The attention mask is ids != pad_token_id. With sep_token_id, the segment (token type) ids are
    rebuilt as BERT's tokenizers give them for a pair: 1 from the token after the first [SEP] up to
    the padding, else 0; without it every token is segment 0.
    """

    def __init__(self, model: nn.Module, pad_token_id: int, sep_token_id: int | None = None) -> None:
        super().__init__()
        self.model, self.pad_token_id, self.sep_token_id = model, int(pad_token_id), sep_token_id

    def segments(self, ids: torch.Tensor) -> torch.Tensor | None:
        """BERT token type ids for a batch of ids (None without a sep_token_id)."""
        if self.sep_token_id is None:
            return None
        sep = (ids == self.sep_token_id).long()
        return ((sep.cumsum(1) - sep >= 1) & (ids != self.pad_token_id)).long()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of token ids (B, L)."""
        return self.model(
            input_ids=ids, attention_mask=(ids != self.pad_token_id).long(), token_type_ids=self.segments(ids)
        ).logits


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise GerneError(
            f"model.arch: bert needs the transformers package ({err}); install the nlp extra: "
            "pip install -e '.[nlp]'"
        ) from None
    return transformers


def bert(
    input_shape: tuple[int, ...], num_classes: int, pretrained: bool, hidden: int, name: str,
    vocab_size: int | None, pad_token_id: int | None = None, sep_token_id: int | None = None,
) -> nn.Module:
    """BERT on token ids: `name`'s weights when pretrained, else a small random 2-layer BERT of width hidden.

    pad_token_id, sep_token_id: the dataset tokenizer's (default: 0, BERT's padding id, and for
    pretrained weights the [SEP] of `name`'s own tokenizer; a random model without one gives every
    token segment 0).
    """
    if len(input_shape) != 1:
        raise GerneError(
            f"model.arch: bert needs token ids (max_length,) from a text dataset, but the dataset gives "
            f"inputs of shape {input_shape}; use arch: mlp, cnn or resnet"
        )
    if vocab_size is None:
        raise GerneError(
            "model.arch: bert needs a text dataset (civilcomments, multinli), whose tokenizer gives the "
            "vocabulary size; this dataset has none"
        )
    length = input_shape[0]
    transformers = _transformers()
    if not pretrained:
        config = transformers.BertConfig(
            vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=2,
            num_attention_heads=2 if hidden % 2 == 0 else 1, intermediate_size=4 * hidden,
            max_position_embeddings=length, type_vocab_size=2, num_labels=num_classes,
            pad_token_id=0 if pad_token_id is None else pad_token_id,
        )
        model = transformers.BertForSequenceClassification(config)
        return TextClassifier(model, config.pad_token_id, sep_token_id)
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=num_classes, ignore_mismatched_sizes=True,  # a new head for another label count
        )
    except Exception as err:  # OSError offline or not found, ValueError for a bad folder, hub errors
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise GerneError(
            f"model.pretrained: could not load the weights of model.name {name!r} ({type(err).__name__}: "
            f"{first}); set model.name to a local folder holding them (config.json and the weights, as "
            "save_pretrained writes them), load it online once so Hugging Face caches it under $HF_HOME, "
            "or set model.pretrained: false"
        ) from None
    model, config = model.float(), model.config  # train in float32 whatever the checkpoint's dtype
    if length > getattr(config, "max_position_embeddings", length):
        raise GerneError(
            f"data.max_length: {length} tokens exceed the {config.max_position_embeddings} positions of "
            f"model.name {name!r}; lower data.max_length"
        )
    if vocab_size > config.vocab_size:
        raise GerneError(
            f"data.tokenizer: its {vocab_size} token ids do not fit the {config.vocab_size} embeddings of "
            f"model.name {name!r}; use the tokenizer of that model"
        )
    pad = config.pad_token_id if config.pad_token_id is not None else (pad_token_id or 0)
    sep = sep_token_id if sep_token_id is not None else _sep_token_id(transformers, name, config)
    return TextClassifier(model, pad, sep)


def _sep_token_id(transformers, name: str, config) -> int | None:
    """The [SEP] id of model `name`'s own tokenizer (for segment ids), else the config's, else None."""
    try:
        return transformers.AutoTokenizer.from_pretrained(name).sep_token_id
    except Exception as err:  # the model loaded, its tokenizer did not: segments all 0
        sep = getattr(config, "sep_token_id", None)
        if sep is None:
            log.warning("model.name %s: no tokenizer to find [SEP] (%s); all tokens get segment 0", name, err)
        return sep


def build_model(
    arch: str, input_shape: tuple[int, ...], num_classes: int, pretrained: bool = False,
    hidden: int = 100, name: str = "bert-base-uncased", vocab_size: int | None = None,
    pad_token_id: int | None = None, sep_token_id: int | None = None,
) -> nn.Module:
    """The model named by `model.arch` for inputs of `input_shape` and `num_classes` outputs.

    bert only: name (model.name), vocab_size, pad_token_id and sep_token_id (the dataset tokenizer's).
    A model too large for this machine's memory is a GerneError naming model.hidden (or model.arch).
    """
    sized = arch == "mlp" or (arch == "bert" and not pretrained)  # the archs whose size model.hidden sets
    field, fix = ("model.hidden", f"lower model.hidden (now {hidden})") if sized else (
        "model.arch", f"building {arch} needs more memory than this machine has; use a smaller arch")
    with allocation_failures_as(field, f"{fix} for inputs {tuple(input_shape)} and {num_classes} classes"):
        return _build_model(arch, input_shape, num_classes, pretrained, hidden, name, vocab_size,
                            pad_token_id, sep_token_id)


def _build_model(
    arch: str, input_shape: tuple[int, ...], num_classes: int, pretrained: bool, hidden: int, name: str,
    vocab_size: int | None, pad_token_id: int | None, sep_token_id: int | None,
) -> nn.Module:
    if arch == "mlp":
        if pretrained:
            raise GerneError("model.pretrained: there are no pretrained weights for mlp; set it false")
        return mlp(math.prod(input_shape), num_classes, hidden)
    if arch == "bert":
        return bert(input_shape, num_classes, pretrained, hidden, name, vocab_size, pad_token_id,
                    sep_token_id)
    if arch not in ARCHS:
        raise GerneError(f"model.arch: unknown arch {arch!r}; use one of: {', '.join(ARCHS + TEXT_ARCHS)}")
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
