"""Image files read lazily: the Source behind every on-disk image dataset.

Transforms as in the paper: `none` for the MNIST/CIFAR family and bFFHQ (the image as stored,
uint8 CHW, scaled to [0, 1] when batched) and `imagenet224` for Waterbirds and CelebA (resize
the shorter side to 256, centre-crop 224, ImageNet mean/std normalisation). Every file is checked
to exist when the source is made, so a missing file is one clear error before training starts
rather than a crash inside a DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gerne_ray.data.base import Source
from gerne_ray.errors import GerneError

TRANSFORMS = ("none", "imagenet224")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_rgb(path: str) -> np.ndarray:
    """One image file as an RGB uint8 array (H, W, 3)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants


class ImageFiles(Source):
    """RGB images from files: uint8 (3, H, W) tensors (`none`) or normalised float32 ones (`imagenet224`)."""

    def __init__(self, paths: Sequence[str | Path], transform: str = "none", where: str = "data.root"):
        if transform not in TRANSFORMS:
            raise GerneError(f"image transform {transform!r}: use one of {', '.join(TRANSFORMS)}")
        self.paths = [str(p) for p in paths]
        self.transform = transform
        missing = [p for p in self.paths if not Path(p).is_file()]
        if missing:
            raise GerneError(
                f"{where}: {len(missing)} of {len(self.paths)} image files are missing, e.g. {missing[0]}; "
                "check data.root and that the dataset was extracted completely"
            )
        if transform == "imagenet224":
            self.input_shape = (3, 224, 224)
        elif self.paths:
            h, w, _ = read_rgb(self.paths[0]).shape
            self.input_shape = (3, h, w)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = torch.from_numpy(read_rgb(self.paths[i])).permute(2, 0, 1).contiguous()
        if self.transform == "none":
            return image
        from torchvision.transforms import v2

        pipeline = v2.Compose([
            v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        return pipeline(image)
