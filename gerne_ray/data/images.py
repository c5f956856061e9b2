"""Image files read lazily: the Source behind every on-disk image dataset.

Transforms as in the paper: `none` for the MNIST/CIFAR family and bFFHQ (the image as stored,
uint8 CHW, scaled to [0, 1] when batched) and `imagenet224` for Waterbirds and CelebA (resize
the shorter side to 256, centre-crop 224, ImageNet mean/std normalisation). Every file is checked
to exist when the source is made, so a missing file is one clear error before training starts
rather than a crash inside a DataLoader worker; with `check_headers` (the user-listed layouts,
metadata_csv and parquet) every file's header is read too, which finds files that are no images and
decompression bombs (a header claiming more than PIL's 89.5 million pixel limit) without decoding.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gerne_ray.data.base import Source
from gerne_ray.errors import GerneError

TRANSFORMS = ("none", "imagenet224")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _image_errors():
    """What PIL raises for a file that is not an image it can read (header or data)."""
    import struct

    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _unreadable(path: str, err: Exception, where: str) -> GerneError:
    from PIL import Image

    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return GerneError(
            f"{where}: {path} claims an image too large to decode safely ({err}); resize it to a sensible "
            "size or remove it (a decompression bomb would exhaust memory)"
        )
    return GerneError(f"{where}: {path} is not a readable image ({type(err).__name__}: {str(err)[:200]}); "
                      "replace or remove it")


def image_size(path: str, where: str = "data.root") -> tuple[int, int]:
    """(width, height) from an image file's header (the pixels are not decoded), or a GerneError.

    An image of more than PIL's Image.MAX_IMAGE_PIXELS (89.5 million) pixels is refused: its header
    may be a decompression bomb's.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.size
    except (*_image_errors(), Image.DecompressionBombWarning) as err:
        raise _unreadable(path, err, where) from None


def read_rgb(path: str, where: str = "data.root") -> np.ndarray:
    """One image file as an RGB uint8 array (H, W, 3), or a GerneError naming the file."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy, as torch wants
    except (*_image_errors(), Image.DecompressionBombWarning) as err:
        raise _unreadable(path, err, where) from None


class ImageFiles(Source):
    """RGB images from files: uint8 (3, H, W) tensors (`none`) or normalised float32 ones (`imagenet224`)."""

    def __init__(self, paths: Sequence[str | Path], transform: str = "none", where: str = "data.root",
                 check_headers: bool = False):
        """check_headers: read every file's header now (cheap: no pixels are decoded), so that an
        unreadable file, a decompression bomb or, with transform `none`, an image of another size
        than the first is one error here rather than a crash in a DataLoader worker."""
        if transform not in TRANSFORMS:
            raise GerneError(f"image transform {transform!r}: use one of {', '.join(TRANSFORMS)}")
        self.paths = [str(p) for p in paths]
        self.transform = transform
        self.where = where
        missing = [p for p in self.paths if not Path(p).is_file()]
        if missing:
            raise GerneError(
                f"{where}: {len(missing)} of {len(self.paths)} image files are missing, e.g. {missing[0]}; "
                "check data.root and that the dataset was extracted completely"
            )
        if check_headers:
            self._check_headers()
        if transform == "imagenet224":
            self.input_shape = (3, 224, 224)
        elif self.paths:
            h, w, _ = read_rgb(self.paths[0], where).shape
            self.input_shape = (3, h, w)

    def _check_headers(self) -> None:
        """Every file's header is an image's (not a bomb's); with `none`, all of the first one's size."""
        first = None
        for path in self.paths:
            size = image_size(path, self.where)
            first = first or (path, size)
            if self.transform == "none" and size != first[1]:
                raise GerneError(
                    f"{self.where}: {path} is {size[0]}x{size[1]} pixels but {first[0]} is "
                    f"{first[1][0]}x{first[1][1]}; images used as stored (transform none) must all have one "
                    "size: resize them to one size"
                )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = torch.from_numpy(read_rgb(self.paths[i], self.where)).permute(2, 0, 1).contiguous()
        if self.transform == "none":
            return image
        from torchvision.transforms import v2

        pipeline = v2.Compose([
            v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        return pipeline(image)
