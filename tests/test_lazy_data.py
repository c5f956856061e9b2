"""Lazily read inputs: image files through a DataLoader with worker processes train exactly as the
same images held in memory."""

import numpy as np
import pytest
import torch

from gerne_ray.data import load_dataset
from gerne_ray.data.base import GroupedDataset, as_model_input
from gerne_ray.data.images import ImageFiles
from gerne_ray.errors import GerneError
from gerne_ray.loop import train_loop
from gerne_ray.spec import load_spec
from gerne_ray.training import prepare

SPEC = {
    "name": "lazy",
    "data": {"dataset": "colored_digits"},
    "model": {"arch": "cnn"},
    "method": {"name": "gerne", "c": 0.5, "beta": 0.5},
    "optim": {"epochs": 2, "batch_size_per_class": 4, "steps_per_epoch": 6, "lr": 0.05},
}


def as_png_files(ds: GroupedDataset, folder) -> tuple[GroupedDataset, list[str]]:
    """The dataset's images as uint8 in memory, and the same images written as PNG files."""
    from PIL import Image

    images = (ds.inputs * 255).round().clamp(0, 255).to(torch.uint8)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    in_memory = GroupedDataset(ds.name, images, ds.y, ds.a, ds.split, ds.ids, ds.num_classes,
                               ds.num_attributes)
    return in_memory, paths


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    ds = load_dataset(load_spec(SPEC).data)
    in_memory, paths = as_png_files(ds, tmp_path_factory.mktemp("png"))
    lazy = GroupedDataset(ds.name, ImageFiles(paths), ds.y, ds.a, ds.split, ds.ids, ds.num_classes,
                          ds.num_attributes)
    return in_memory, lazy


def test_image_files_read_back_what_was_written(datasets):
    in_memory, lazy = datasets
    assert lazy.input_shape == in_memory.input_shape == (3, 8, 8)
    rows = [np.array([5, 0, 17]), np.array([3])]
    for x, y in zip(lazy.batches(rows, num_workers=2), in_memory.batches(rows), strict=True):
        assert x.dtype == torch.float32 and torch.equal(x, y)
    assert torch.equal(as_model_input(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("workers", [0, 2])
def test_training_from_files_equals_training_from_memory(datasets, workers):
    in_memory, lazy = datasets
    spec = load_spec(SPEC, [f"data.num_workers={workers}"])
    a = train_loop(spec, prepare(spec, in_memory))
    b = train_loop(spec, prepare(spec, lazy))
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == rb["loss"] and ra["val_gba"] == rb["val_gba"]
        assert ra["test_groups"] == rb["test_groups"]


def test_missing_files_are_one_error_naming_the_folder(tmp_path):
    with pytest.raises(GerneError, match=r"data.root: 1 of 2 image files are missing, e.g. .*gone.png"):
        (tmp_path / "here.png").write_bytes(b"")
        ImageFiles([tmp_path / "here.png", tmp_path / "gone.png"])


def test_imagenet_transform_shape_and_normalisation(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((300, 400, 3), 128, dtype=np.uint8)).save(tmp_path / "grey.png")
    x = ImageFiles([tmp_path / "grey.png"], transform="imagenet224")[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 100, 100], expected, atol=1e-5)


def test_files_reach_ray_train_workers(ray_cluster, datasets, tmp_path):
    """A lazy dataset travels to two Ray Train workers (by the object store) and trains there."""
    from gerne_ray.training import train

    _, lazy = datasets
    spec = load_spec(SPEC, ["scaling.num_workers=2", "data.num_workers=1", f"storage.path={tmp_path}"])
    result = train(spec, dataset=lazy)
    assert result["status"] == "completed" and result["epochs_run"] == 2
