"""The table-driven on-disk loaders (metadata_csv, parquet, waterbirds, celeba) on tiny fixture trees
built here: labels, splits, ids and inputs exactly as written, one clear error per broken layout, and
one epoch of training through each by the public path. Nothing downloads."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gerne_ray.data.celeba import load_celeba
from gerne_ray.data.images import ImageFiles
from gerne_ray.data.metadata_csv import load_metadata_csv
from gerne_ray.data.parquet import load_parquet
from gerne_ray.data.waterbirds import load_waterbirds
from gerne_ray.errors import GerneError
from gerne_ray.training import train

# (y, a, split) per row: both classes in every split, a minority group in train
ROWS = [(0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 1, 0), (1, 1, 0), (1, 0, 0),
        (0, 0, 1), (0, 1, 1), (1, 1, 1), (1, 0, 1), (0, 0, 2), (0, 1, 2), (1, 1, 2), (1, 0, 2)]
Y = np.array([r[0] for r in ROWS])
A = np.array([r[1] for r in ROWS])
SPLIT = np.array([r[2] for r in ROWS])

CELEBA_NAMES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair "
    "Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face "
    "Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair "
    "Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def png(path, height: int, width: int, value: int) -> str:
    """Write a small RGB image of one grey level (value) and return its path."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.full((height, width, 3), value, dtype=np.uint8)
    rgb[0, 0] = (value + 1) % 256  # not flat, so a read-back is checkable
    Image.fromarray(rgb).save(path)
    return str(path)


def spec(name: str, dataset: str, root, tmp_path, arch: str = "cnn", **data) -> dict:
    """A one-epoch, two-step job on the given dataset."""
    return {
        "name": name, "data": {"dataset": dataset, "root": str(root), **data}, "model": {"arch": arch},
        "method": {"name": "gerne", "c": 0.5, "beta": 0.0},
        "optim": {"epochs": 1, "batch_size_per_class": 2, "steps_per_epoch": 2},
        "storage": {"path": str(tmp_path / "runs")},
    }


def one_batch(ds, rows) -> torch.Tensor:
    """The input tensor of one batch of rows."""
    (x,) = list(ds.batches([np.array(rows)]))
    return x


# ---------------------------------------------------------------- metadata_csv (SubpopBench layout)


def subpop_tree(root, size: int = 8, ids=None) -> None:
    """root/metadata.csv over images/<i>.png of size x size pixels."""
    ids = list(range(100, 100 + len(ROWS))) if ids is None else ids
    for i in range(len(ROWS)):
        png(root / "images" / f"{i}.png", size, size, 10 * i)
    pd.DataFrame({"id": ids, "filename": [f"images/{i}.png" for i in range(len(ROWS))],
                  "split": SPLIT, "y": Y, "a": A}).to_csv(root / "metadata.csv", index=False)


@pytest.fixture
def subpop(tmp_path):
    root = tmp_path / "subpop"
    subpop_tree(root)
    return root


def test_metadata_csv_reads_groups_splits_ids_and_images(subpop):
    ds = load_metadata_csv(str(subpop))
    assert ds.name == "metadata_csv" and (ds.num_classes, ds.num_attributes) == (2, 2)
    assert ds.y.tolist() == Y.tolist() and ds.a.tolist() == A.tolist() and ds.split.tolist() == SPLIT.tolist()
    assert ds.ids.tolist() == list(range(100, 116))
    assert (len(ds.indices("train")), len(ds.indices("val")), len(ds.indices("test"))) == (8, 4, 4)
    assert isinstance(ds.inputs, ImageFiles) and ds.inputs.transform == "none"
    assert ds.input_shape == (3, 8, 8)
    x = one_batch(ds, [3, 0, 15])
    assert x.shape == (3, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x[1, :, 1, 1], torch.zeros(3))
    assert torch.allclose(x[2, :, 1, 1], torch.full((3,), 150 / 255))


def test_metadata_csv_large_images_get_imagenet224(tmp_path):
    subpop_tree(tmp_path, size=80)
    ds = load_metadata_csv(str(tmp_path))
    assert ds.inputs.transform == "imagenet224" and ds.input_shape == (3, 224, 224)
    x = one_batch(ds, [0, 1])
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32


def test_metadata_csv_takes_split_words_and_integral_floats(subpop):
    df = pd.read_csv(subpop / "metadata.csv")
    df["split"] = df["split"].map({0: "train", 1: "val", 2: "test"})
    df["y"] = df["y"].astype(float)
    df.to_csv(subpop / "metadata.csv", index=False)
    ds = load_metadata_csv(str(subpop))
    assert ds.split.tolist() == SPLIT.tolist() and ds.y.tolist() == Y.tolist() and ds.y.dtype == np.int64


def edit_csv(root, **columns) -> None:
    df = pd.read_csv(root / "metadata.csv", dtype=str)
    for name, change in columns.items():
        if change is None:
            df = df.drop(columns=name)
        else:
            df.loc[change[0], name] = change[1]
    df.to_csv(root / "metadata.csv", index=False)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: (r / "metadata.csv").unlink(), r"data.root: .*metadata.csv does not exist"),
        (lambda r: (r / "metadata.csv").write_text(""), r"data.root: .*metadata.csv is empty"),
        (lambda r: edit_csv(r, a=None, split=None),
         r"has no column\(s\) split, a; the metadata_csv layout needs columns id, filename, split, y, a"),
        (lambda r: edit_csv(r, split=(4, "3")), r"column 'split' must be 0/1/2 .* line 6 has '3'"),
        (lambda r: edit_csv(r, y=(2, "-1")), r"column 'y' must hold labels 0 or more, but line 4 has -1"),
        (lambda r: edit_csv(r, a=(0, "1.5")), r"column 'a' must hold integers, but line 2 has '1.5'"),
        (lambda r: edit_csv(r, a=(1, "")), r"column 'a' must hold integers, but line 3 has ''"),
        (lambda r: edit_csv(r, y=(1, "cat")), r"column 'y' must hold integers, but line 3 has 'cat'"),
        (lambda r: edit_csv(r, id=(1, "100")), r"column 'id' must be unique, but id 100 appears 2 times"),
        (lambda r: edit_csv(r, filename=(5, "")), r"column 'filename' is empty in line 7"),
        (lambda r: (r / "images" / "7.png").unlink(),
         r"data.root: 1 of 16 image files are missing, e.g. .*7.png"),
        (lambda r: (r / "images" / "0.png").write_text("not an image"), r"0.png is not a readable image"),
        (lambda r: edit_csv(r, y=(0, "999999")), r"makes 1000000 x 2 groups; number classes"),
    ],
)
def test_metadata_csv_errors_name_the_file_column_and_fix(subpop, edit, expected):
    edit(subpop)
    with pytest.raises(GerneError, match=expected):
        load_metadata_csv(str(subpop))


def test_metadata_csv_without_root_says_what_to_set():
    with pytest.raises(GerneError, match=r"data.root: the metadata_csv dataset reads files; set data.root .*"
                                         r"metadata.csv"):
        load_metadata_csv(None)


@pytest.mark.parametrize("workers", [0, 2])
def test_metadata_csv_trains_one_epoch(subpop, tmp_path, workers):
    result = train(spec(f"subpop-{workers}", "metadata_csv", subpop, tmp_path, num_workers=workers))
    assert result["status"] == "completed" and result["epochs_run"] == 1


# ---------------------------------------------------------------- parquet


def table(**inputs) -> pa.Table:
    """The ROWS labels with the given input columns (and an extra attribute column `place`)."""
    return pa.table({"y": Y, "a": A, "split": SPLIT, "place": 1 - A, "colour": A + Y, **inputs})


def test_parquet_list_features(tmp_path):
    feats = np.arange(len(ROWS) * 3, dtype=np.float32).reshape(-1, 3)
    features = pa.array(feats.tolist(), pa.list_(pa.float32()))
    pq.write_table(table(features=features), tmp_path / "manifest.parquet")
    ds = load_parquet(str(tmp_path))
    assert ds.name == "parquet" and (ds.num_classes, ds.num_attributes) == (2, 2)
    assert ds.y.tolist() == Y.tolist() and ds.a.tolist() == A.tolist() and ds.split.tolist() == SPLIT.tolist()
    assert ds.ids.tolist() == list(range(len(ROWS)))  # no id column: the row number
    assert ds.input_shape == (3,) and ds.inputs.dtype == torch.float32
    x = one_batch(ds, [2, 0])
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(feats[[2, 0]]))


def test_parquet_numbered_columns_in_numeric_order_with_ids(tmp_path):
    feats = np.random.default_rng(0).normal(size=(len(ROWS), 11))
    columns = {f"x{j}": feats[:, j] for j in (10, 2, 0, 9, 1, 3, 4, 5, 6, 7, 8)}  # stored out of order
    pq.write_table(table(id=np.arange(len(ROWS)) * 7 + 1, **columns), tmp_path / "data.parquet")
    ds = load_parquet(str(tmp_path / "data.parquet"))  # a file path is taken too
    assert ds.input_shape == (11,) and ds.ids.tolist() == [7 * i + 1 for i in range(len(ROWS))]
    assert torch.allclose(ds.inputs, torch.from_numpy(feats).float())


def test_parquet_image_paths_and_other_label_columns(tmp_path):
    paths = [png(tmp_path / "img" / f"{i}.png", 6, 5, 9 * i) for i in range(len(ROWS))]
    pq.write_table(table(path=[f"img/{i}.png" for i in range(len(ROWS))], split_name=SPLIT),
                   tmp_path / "manifest.parquet")
    ds = load_parquet(str(tmp_path), attribute="place")
    assert ds.a.tolist() == (1 - A).tolist() and isinstance(ds.inputs, ImageFiles)
    assert ds.inputs.paths == paths and ds.input_shape == (3, 6, 5)
    assert one_batch(ds, [1, 2, 3]).shape == (3, 3, 6, 5)
    ds = load_parquet(str(tmp_path), target="a", attribute="colour")
    assert ds.y.tolist() == A.tolist() and ds.a.tolist() == (A + Y).tolist() and ds.num_attributes == 3


def test_parquet_split_words_and_boolean_labels(tmp_path):
    words = np.array(["train", "val", "test"])[SPLIT]
    pq.write_table(pa.table({"y": Y.astype(bool), "a": A, "split": words, "x0": Y * 1.0}),
                   tmp_path / "manifest.parquet")
    ds = load_parquet(str(tmp_path))
    assert ds.split.tolist() == SPLIT.tolist() and ds.y.tolist() == Y.tolist()


def parquet_case(folder, **inputs) -> None:
    columns = {"y": Y, "a": A, "split": SPLIT, "x0": np.ones(len(ROWS))}
    for name, value in inputs.items():
        if value is None:
            columns.pop(name)
        else:
            columns[name] = value
    pq.write_table(pa.table(columns), folder / "manifest.parquet")


@pytest.mark.parametrize(
    "inputs, options, expected",
    [
        ({"x0": None}, {}, r"give the inputs as one of: .* \(it has none of them\); keep exactly one"),
        ({"features": [[1.0]] * 16}, {}, r"\(it has 'features' and 'x0, x1, ...'\); keep exactly one"),
        ({"x0": None, "path": ["a.png"] * 16, "filename": ["a.png"] * 16}, {},
         r"it has 'path' and 'filename'"),
        ({"x0": None, "features": [[1.0, 2.0]] * 15 + [[1.0]]}, {},
         r"column 'features' has 2 values in row 0 but 1 in row 15; every row needs the same number"),
        ({"x0": None, "features": ["a"] * 16}, {}, r"column 'features' has type string, not a list"),
        ({"x2": np.ones(16)}, {}, r"feature columns must be x0, x1, ... without gaps, but x1 is missing"),
        ({"x0": [1.0] * 5 + [float("nan")] + [1.0] * 10}, {}, r"NaN or infinite value .* in row 5"),
        ({"x0": ["a"] * 16}, {}, r"feature column 'x0' has type string"),
        ({"split": None}, {}, r"has no column 'split'; add one with 0/1/2"),
        ({"split": [0] * 15 + [5]}, {}, r"column 'split' must be 0/1/2 .* row 15 has 5"),
        ({"a": None}, {},
         r"data.root: .* has no column 'a'; add it, or name the column to use with data.attribute"),
        ({}, {"attribute": "colour"},
         r"data.attribute: .* has no column 'colour'; use one of: y, a, split, x0"),
        ({}, {"target": "label"}, r"data.target: .* has no column 'label'; use one of"),
        ({"y": [0, None] * 8}, {}, r"column 'y' is null in row 1; every row needs a value"),
        ({"a": [0.5] * 16}, {}, r"column 'a' must hold integers, but row 0 has 0.5"),
        ({"y": [-2] * 16}, {}, r"column 'y' must hold labels 0 or more, but row 0 has -2"),
        ({"id": [3] * 16}, {}, r"column 'id' must be unique, but id 3 appears 16 times"),
        ({"x0": None, "path": ["gone.png"] * 16}, {}, r"data.root: 16 of 16 image files are missing"),
    ],
)
def test_parquet_errors_name_the_file_column_and_fix(tmp_path, inputs, options, expected):
    parquet_case(tmp_path, **inputs)
    with pytest.raises(GerneError, match=expected):
        load_parquet(str(tmp_path), **options)


def test_parquet_missing_or_unreadable_manifest(tmp_path):
    with pytest.raises(GerneError, match=r"data.root: the parquet dataset reads files"):
        load_parquet(None)
    pq.write_table(table(x0=Y * 1.0), tmp_path / "mine.parquet")
    with pytest.raises(GerneError, match=r"no manifest.parquet \(it holds mine.parquet: rename the table"):
        load_parquet(str(tmp_path))
    (tmp_path / "manifest.parquet").write_text("y,a,split\n")
    with pytest.raises(GerneError, match=r"manifest.parquet is not a readable Parquet file"):
        load_parquet(str(tmp_path))
    with pytest.raises(GerneError, match=r"data.root: .*nowhere does not exist"):
        load_parquet(str(tmp_path / "nowhere"))


def test_parquet_trains_one_epoch(tmp_path):
    feats = np.random.default_rng(1).normal(size=(len(ROWS), 4)) + Y[:, None]
    pq.write_table(table(features=pa.array(feats.tolist())), tmp_path / "manifest.parquet")
    result = train(spec("parquet", "parquet", tmp_path, tmp_path, arch="mlp", attribute="place"))
    assert result["status"] == "completed" and result["epochs_run"] == 1


# ---------------------------------------------------------------- waterbirds (group_DRO release)


@pytest.fixture(scope="module")
def waterbirds(tmp_path_factory):
    root = tmp_path_factory.mktemp("wb") / "waterbird_complete95_forest2water2"
    names = []
    for i, y in enumerate(Y):
        species = "001.Black_footed_Albatross" if y else "100.Brown_Pelican"
        name = f"{species}/bird_{i:04d}.jpg"
        png(root / name, 250, 300, 12 * i)
        names.append(name)
    pd.DataFrame({
        "img_id": np.arange(len(ROWS)) + 1, "img_filename": names, "y": Y, "split": SPLIT, "place": A,
        "place_filename": [f"/o/ocean/{i:08d}.jpg" for i in range(len(ROWS))],
    }).to_csv(root / "metadata.csv", index=False)
    return root


def test_waterbirds_reads_the_release_layout(waterbirds):
    ds = load_waterbirds(str(waterbirds))
    assert ds.name == "waterbirds" and (ds.num_classes, ds.num_attributes) == (2, 2)
    assert ds.y.tolist() == Y.tolist() and ds.a.tolist() == A.tolist() and ds.split.tolist() == SPLIT.tolist()
    assert ds.ids.tolist() == list(range(1, len(ROWS) + 1))
    groups = {g: int(((ds.y == g[0]) & (ds.a == g[1]) & (ds.split == 0)).sum()) for g in [(0, 0), (0, 1),
                                                                                          (1, 0), (1, 1)]}
    assert groups == {(0, 0): 3, (0, 1): 1, (1, 0): 1, (1, 1): 3}
    assert ds.inputs.transform == "imagenet224" and ds.input_shape == (3, 224, 224)
    assert ds.inputs.paths[0].endswith("100.Brown_Pelican/bird_0000.jpg")
    x = one_batch(ds, [0, 5])
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32


def rewrite(root, change) -> None:
    """Apply change to root/metadata.csv as a DataFrame."""
    change(pd.read_csv(root / "metadata.csv")).to_csv(root / "metadata.csv", index=False)


def copy_tree(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: rewrite(r, lambda df: df.drop(columns="place")),
         r"has no column\(s\) place; the group_DRO Waterbirds metadata needs columns img_id, img_filename"),
        (lambda r: rewrite(r, lambda df: df.assign(y=[2] + [0] * 15)),
         r"column 'y' must be 0 or 1, but line 2 has 2"),
        (lambda r: rewrite(r, lambda df: df.assign(split=[9] * 16)),
         r"column 'split' must be 0/1/2"),
        (lambda r: (r / "100.Brown_Pelican" / "bird_0000.jpg").unlink(), r"1 of 16 image files are missing"),
    ],
)
def test_waterbirds_errors(waterbirds, tmp_path, edit, expected):
    root = copy_tree(waterbirds, tmp_path / "wb")
    edit(root)
    with pytest.raises(GerneError, match=expected):
        load_waterbirds(str(root))


def test_waterbirds_root_errors_point_at_the_release_folder(waterbirds):
    with pytest.raises(GerneError, match=r"data.root: the waterbirds dataset reads files; set data.root "
                                         r"to the extracted waterbird_complete95_forest2water2 folder"):
        load_waterbirds(None)
    with pytest.raises(GerneError, match=r"metadata.csv does not exist; it is in .*water2: point data.root"):
        load_waterbirds(str(waterbirds.parent))


def test_waterbirds_trains_one_epoch(waterbirds, tmp_path):
    result = train(spec("waterbirds", "waterbirds", waterbirds, tmp_path))
    assert result["status"] == "completed" and result["epochs_run"] == 1


# ---------------------------------------------------------------- celeba

BLOND, MALE = Y, A


def celeba_values() -> np.ndarray:
    """+-1 attribute table (N, 40): Blond_Hair = Y, Male = A, Smiling = 1 - A, the rest random."""
    values = np.where(np.random.default_rng(2).random((len(ROWS), 40)) < 0.5, -1, 1)
    for name, column in (("Blond_Hair", BLOND), ("Male", MALE), ("Smiling", 1 - MALE)):
        values[:, CELEBA_NAMES.index(name)] = 2 * column - 1
    return values


def write_celeba_txt(root) -> None:
    values = celeba_values()
    lines = [str(len(ROWS)), " ".join(CELEBA_NAMES) + " "]
    lines += [f"{i + 1:06d}.jpg " + " ".join(f"{v:2d}" for v in row) for i, row in enumerate(values)]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {s}\n" for i, s in enumerate(SPLIT))
    )


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    for i in range(len(ROWS)):
        png(root / "img_align_celeba" / f"{i + 1:06d}.jpg", 218, 178, 15 * i)
    write_celeba_txt(root)
    return root


def test_celeba_defaults_blond_hair_by_male(celeba):
    ds = load_celeba(str(celeba))
    assert ds.name == "celeba" and (ds.num_classes, ds.num_attributes) == (2, 2)
    assert ds.y.tolist() == BLOND.tolist() and ds.a.tolist() == MALE.tolist()
    assert ds.split.tolist() == SPLIT.tolist() and ds.ids.tolist() == list(range(1, len(ROWS) + 1))
    assert ds.input_shape == (3, 224, 224) and ds.inputs.paths[3].endswith("img_align_celeba/000004.jpg")
    x = one_batch(ds, [4, 1, 7])
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32


def test_celeba_other_target_and_attribute(celeba):
    ds = load_celeba(str(celeba), target="Smiling", attribute="Blond_Hair")
    assert ds.y.tolist() == (1 - MALE).tolist() and ds.a.tolist() == BLOND.tolist()


def test_celeba_kaggle_csv_variant_gives_the_same_dataset(celeba, tmp_path):
    root = tmp_path / "kaggle"
    (root / "img_align_celeba").mkdir(parents=True)
    (root / "img_align_celeba" / "img_align_celeba").symlink_to(celeba / "img_align_celeba")
    ids = [f"{i + 1:06d}.jpg" for i in range(len(ROWS))]
    attrs = pd.DataFrame(celeba_values(), columns=CELEBA_NAMES)
    attrs.insert(0, "image_id", ids)
    attrs.to_csv(root / "list_attr_celeba.csv", index=False)
    pd.DataFrame({"image_id": ids[::-1], "partition": SPLIT[::-1]}).to_csv(  # order differs: joined by id
        root / "list_eval_partition.csv", index=False)
    ds, ref = load_celeba(str(root)), load_celeba(str(celeba))
    for field in ("y", "a", "split", "ids"):
        assert getattr(ds, field).tolist() == getattr(ref, field).tolist()
    assert ds.inputs.paths[0].endswith("img_align_celeba/img_align_celeba/000001.jpg")


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"target": "Blonde"}, r"data.target: 'Blonde' is not a CelebA attribute in list_attr_celeba.txt; "
                               r"use one of: 5_o_Clock_Shadow, .*Blond_Hair, .*Young"),
        ({"attribute": "male"}, r"data.attribute: 'male' is not a CelebA attribute .* use one of: .*Male"),
        ({"target": "Male"}, r"data.target and data.attribute both name 'Male'"),
    ],
)
def test_celeba_unknown_names_list_the_valid_ones(celeba, options, expected):
    with pytest.raises(GerneError, match=expected):
        load_celeba(str(celeba), **options)


def test_celeba_layout_errors(celeba, tmp_path):
    with pytest.raises(GerneError, match=r"data.root: the celeba dataset reads files; set data.root"):
        load_celeba(None)
    with pytest.raises(GerneError, match=r"has neither list_attr_celeba.txt nor list_attr_celeba.csv"):
        load_celeba(str(tmp_path))
    root = copy_tree(celeba, tmp_path / "c")
    attr = root / "list_attr_celeba.txt"
    attr.write_text("\n".join(attr.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(GerneError, match=r"announces 16 images on its first line but lists 15"):
        load_celeba(str(root))
    write_celeba_txt(root)
    part = root / "list_eval_partition.txt"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[:-2]))
    with pytest.raises(GerneError, match=r"list_eval_partition.txt has no row for 000015.jpg \(2 images"):
        load_celeba(str(root))
    write_celeba_txt(root)
    attr.write_text(attr.read_text().replace("000002.jpg -1", "000002.jpg  2", 1).replace(
        "000002.jpg  1", "000002.jpg  2", 1))
    with pytest.raises(GerneError, match=r"column '5_o_Clock_Shadow' must hold \+1/-1, but line 4 "
                                         r"\(000002.jpg\) has 2"):
        load_celeba(str(root), target="5_o_Clock_Shadow")
    write_celeba_txt(root)
    import shutil

    shutil.rmtree(root / "img_align_celeba")
    with pytest.raises(GerneError, match=r"img_align_celeba is not a folder; extract img_align_celeba.zip"):
        load_celeba(str(root))


def test_celeba_trains_one_epoch(celeba, tmp_path):
    result = train(spec("celeba", "celeba", celeba, tmp_path, target="Blond_Hair", attribute="Male"))
    assert result["status"] == "completed" and result["epochs_run"] == 1
