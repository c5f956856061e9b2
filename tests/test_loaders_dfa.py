"""Colored MNIST, Corrupted CIFAR-10 and bFFHQ loaders: DFA-style folders and offline generation.

Every fixture is built in tmp_path (tiny PNGs in the DFA layouts; MNIST idx files and CIFAR-10
python batches with a few images each), and urllib is cut off for the whole module, so nothing
is downloaded: the download paths run up to the request and fail as they would offline.
"""

import colorsys
import pickle
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from gerne_ray.data import colored_digits
from gerne_ray.data import corrupted_cifar10 as cc
from gerne_ray.data.base import TEST, TRAIN, VAL
from gerne_ray.data.bffhq import load_bffhq
from gerne_ray.data.colored_mnist import JITTER, colorize, lff_colours, load_colored_mnist
from gerne_ray.data.corrupted_cifar10 import CORRUPTIONS, corrupt, load_corrupted_cifar10
from gerne_ray.data.dfa import load_dfa_folders, pct_folder
from gerne_ray.data.images import ImageFiles
from gerne_ray.errors import GerneError
from gerne_ray.training import train

K = 10
OFFLINE = "network disabled in tests"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails as it would offline."""

    def refuse(*args, **kwargs):
        raise urllib.error.URLError(OFFLINE)

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# ---- fixture builders ----

def put(folder, size, labels, suffix=".png", start=0):
    """Write one small random image per (y, a) in labels as <id>_<y>_<a><suffix>; return the next id."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i, (y, a) in enumerate(labels, start):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i}_{y}_{a}{suffix}")
    return start + len(labels)


def per_class(root, size, n, offset, sub=True, classes=range(K), start=0, suffix=".png"):
    """n images of every class y with attribute (y + offset) mod 10, in <root>/<y>/ or flat."""
    for y in classes:
        start = put(root / str(y) if sub else root, size, [(y, (y + offset) % K)] * n, suffix, start)
    return start


def table(ds, code, attributes=K):
    """The (y, a) counts of one split."""
    m = ds.split == code
    return np.bincount(ds.y[m] * attributes + ds.a[m], minlength=ds.num_classes * attributes).reshape(
        ds.num_classes, attributes
    )


def shifted_eye(offset, n=1):
    """n where a = (y + offset) mod 10, 0 elsewhere."""
    return n * np.roll(np.eye(K, dtype=np.int64), offset, axis=1)


@pytest.fixture
def cmnist_dfa(tmp_path):
    """Colored MNIST in the DFA layout: 2pct has valid/ inside, 0.5pct uses valid/ beside; test/ flat."""
    root = tmp_path / "cmnist"
    per_class(root / "2pct" / "align", 8, 2, 0, start=0)
    per_class(root / "2pct" / "conflict", 8, 1, 1, start=100)
    per_class(root / "2pct" / "valid", 8, 1, 2, start=200)  # inside, per-class folders
    per_class(root / "0.5pct" / "align", 8, 3, 0, start=300)
    per_class(root / "0.5pct" / "conflict", 8, 1, 1, classes=range(5), start=400)
    per_class(root / "valid", 8, 2, 3, sub=False, start=500)  # beside, flat
    per_class(root / "test", 8, 2, 4, sub=False, start=600)
    (root / "2pct" / "align" / "0" / ".hidden_0_0.png").write_bytes(b"not an image")
    (root / "test" / "README.txt").write_text("not an image either")
    return root


# ---- DFA folders ----

def test_pct_folder_names():
    assert [pct_folder(r) for r in (0.005, 0.01, 0.02, 0.05)] == ["0.5pct", "1pct", "2pct", "5pct"]


def test_dfa_colored_mnist_valid_inside_the_pct_folder(cmnist_dfa):
    ds = load_colored_mnist(str(cmnist_dfa), conflict_ratio=0.02)
    assert isinstance(ds.inputs, ImageFiles) and ds.input_shape == (3, 8, 8)
    assert (ds.num_classes, ds.num_attributes, len(ds.y)) == (10, 10, 30 + 10 + 20)
    assert np.array_equal(ds.split, np.repeat([TRAIN, VAL, TEST], [30, 10, 20]))
    assert np.array_equal(table(ds, TRAIN), shifted_eye(0, 2) + shifted_eye(1))
    assert np.array_equal(table(ds, VAL), shifted_eye(2))  # valid/ inside 2pct wins over valid/ beside
    assert np.array_equal(table(ds, TEST), shifted_eye(4, 2))
    assert np.array_equal(ds.ids, np.arange(60))
    assert not any(".hidden" in p or p.endswith(".txt") for p in ds.inputs.paths)  # skipped
    first = next(ds.batches([np.array([0, 59])]))
    assert first.shape == (2, 3, 8, 8) and first.dtype == torch.float32
    assert 0 <= first.min() <= first.max() <= 1


def test_dfa_colored_mnist_valid_beside_the_pct_folder(cmnist_dfa):
    ds = load_colored_mnist(str(cmnist_dfa), conflict_ratio=0.005)
    assert np.array_equal(table(ds, TRAIN), shifted_eye(0, 3) + np.pad(shifted_eye(1)[:5], ((0, 5), (0, 0))))
    assert np.array_equal(table(ds, VAL), shifted_eye(3, 2))
    assert np.array_equal(table(ds, TEST), shifted_eye(4, 2))


def test_dfa_corrupted_cifar10_under_its_alias_folder(tmp_path):
    root = tmp_path / "cifar10c"
    per_class(root / "5pct" / "align", 32, 1, 0)
    per_class(root / "5pct" / "conflict", 32, 1, 5, start=50, suffix=".jpg")
    per_class(root / "5pct" / "valid", 32, 1, 1, start=100)
    per_class(root / "test", 32, 1, 2, start=150)
    ds = load_corrupted_cifar10(str(tmp_path), conflict_ratio=0.05)  # data.root is the folder above
    assert ds.name == "corrupted_cifar10" and ds.input_shape == (3, 32, 32)
    assert np.array_equal(table(ds, TRAIN), shifted_eye(0) + shifted_eye(5))
    assert np.array_equal(table(ds, VAL), shifted_eye(1))
    assert np.array_equal(table(ds, TEST), shifted_eye(2))


@pytest.fixture
def bffhq_root(tmp_path):
    root = tmp_path / "bffhq"
    for y in (0, 1):
        put(root / "0.5pct" / "align" / str(y), 16, [(y, y)] * 4, start=10 * y)
        put(root / "0.5pct" / "conflict" / str(y), 16, [(y, 1 - y)], start=20 + y)
        put(root / "valid", 16, [(y, y), (y, 1 - y)] * 2, start=30 + 4 * y)
        put(root / "test", 16, [(y, y), (y, 1 - y), (y, 1 - y)], suffix=".jpg", start=40 + 3 * y)
    return root


def test_bffhq(bffhq_root):
    ds = load_bffhq(str(bffhq_root))
    assert (ds.name, ds.num_classes, ds.num_attributes, ds.input_shape) == ("bffhq", 2, 2, (3, 16, 16))
    assert np.array_equal(table(ds, TRAIN, 2), [[4, 1], [1, 4]])
    assert np.array_equal(table(ds, VAL, 2), [[2, 2], [2, 2]])
    assert np.array_equal(table(ds, TEST, 2), [[1, 2], [2, 1]])
    assert np.array_equal(load_bffhq(str(bffhq_root.parent)).y, ds.y)  # also found as data.root/bffhq
    (bffhq_root / "0.5pct").rename(bffhq_root / "1pct")
    with pytest.raises(GerneError, match=r"neither .* nor .*bffhq has the folder 0\.5pct of DFA's bFFHQ"):
        load_bffhq(str(bffhq_root))


def test_dfa_errors_name_the_folder_and_what_is_expected(cmnist_dfa, tmp_path):
    with pytest.raises(GerneError, match=r"no folder 1pct .*it has 0\.5pct, 2pct"):
        load_colored_mnist(str(cmnist_dfa), conflict_ratio=0.01)
    (cmnist_dfa / "5pct" / "align").mkdir(parents=True)
    (cmnist_dfa / "5pct" / "conflict").mkdir()
    (cmnist_dfa / "valid").rename(tmp_path / "valid-aside")
    with pytest.raises(GerneError, match=r"data\.root: no valid/ folder in .*5pct or in "):
        load_dfa_folders(cmnist_dfa, 0.05, "x", K, K)
    (tmp_path / "valid-aside").rename(cmnist_dfa / "valid")
    with pytest.raises(GerneError, match=r"no \.png or \.jpg images in .*5pct/align or .*5pct/conflict"):
        load_dfa_folders(cmnist_dfa, 0.05, "x", K, K)
    put(cmnist_dfa / "5pct" / "align" / "0", 8, [(0, 0)])
    with pytest.raises(GerneError, match=r"no training image of class 1, 2, 3, 4, 5, 6, 7, 8, 9"):
        load_dfa_folders(cmnist_dfa, 0.05, "x", K, K)
    bad = cmnist_dfa / "2pct" / "align" / "3" / "digit3.png"
    bad.write_bytes(b"")
    with pytest.raises(GerneError, match=r"digit3\.png is not named <name>_<y>_<a>\.png"):
        load_colored_mnist(str(cmnist_dfa), conflict_ratio=0.02)
    bad.rename(bad.with_name("x_3_12.png"))
    with pytest.raises(GerneError, match=r"x_3_12\.png has class 3 and attribute 12.*attributes 0\.\.9"):
        load_colored_mnist(str(cmnist_dfa), conflict_ratio=0.02)
    with pytest.raises(GerneError, match=r"data\.root: colored_mnist reads files"):
        load_colored_mnist(None)


# ---- generation: fake MNIST ----

def write_mnist(root, n_train=200, n_test=40):
    """MNIST's four idx files under root/MNIST/raw with tiny random digits, labels cycling 0..9."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, :, :10] = 0  # background
        header = struct.pack(">IIII", 0x803, n, 28, 28)  # idx: uint8 (0x08), 3 dimensions
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(n) % K).astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return root


@pytest.fixture
def mnist_root(tmp_path):
    return write_mnist(tmp_path / "mnist")


def check_lff_protocol(ds, r, n_train, n_val, n_test):
    """Exact LfF counts: per class floor(r n + 0.5) conflicting in train, in blocks; val/test uniform."""
    n_conflict = int(np.floor(r * n_train + 0.5))
    for y in range(K):
        for code, n in ((TRAIN, n_train), (VAL, n_val), (TEST, n_test)):
            assert (ds.split[ds.y == y] == code).sum() == n
        counts = table(ds, TRAIN)[y]
        assert counts[y] == n_train - n_conflict and abs(counts[y] / n_train - (1 - r)) <= 0.5 / n_train
        others = np.roll(counts, -y)[1:]  # attributes y+1, y+2, ... in block order
        assert others.sum() == n_conflict and others.max() - others.min() <= 1
        assert np.all(np.diff(others) <= 0)  # the first blocks take the extra ones
        for code in (VAL, TEST):
            row = table(ds, code)[y]
            assert row.max() - row.min() <= 1
    for code in (VAL, TEST):  # over all classes every attribute is equally frequent
        assert len(set(table(ds, code).sum(axis=0).tolist())) == 1


@pytest.mark.parametrize("r", [0.02, 0.1, 0.5])
def test_generated_colored_mnist_follows_the_lff_protocol(mnist_root, r):
    ds = load_colored_mnist(str(mnist_root), conflict_ratio=r, seed=3)
    assert ds.inputs.dtype == torch.uint8 and ds.inputs.shape == (240, 3, 28, 28)
    check_lff_protocol(ds, r, n_train=18, n_val=2, n_test=4)
    # validation = the last 10% of each class in MNIST's file order; test = MNIST's test set
    assert np.array_equal(np.flatnonzero(ds.split == VAL), np.arange(180, 200))
    assert np.array_equal(np.flatnonzero(ds.split == TEST), np.arange(200, 240))
    # the brightest pixel's colour is the attribute's palette colour (palette colours >= 0.5 apart)
    x = ds.inputs.numpy().reshape(240, 3, -1).astype(np.float32) / 255
    brightest = x[np.arange(240), :, x.sum(axis=1).argmax(axis=1)]
    distance = np.linalg.norm(brightest[:, None, :] - colored_digits.PALETTE[None], axis=2)
    assert np.array_equal(distance.argmin(axis=1), ds.a)
    again = load_colored_mnist(str(mnist_root), conflict_ratio=r, seed=3)
    assert torch.equal(again.inputs, ds.inputs) and np.array_equal(again.a, ds.a)


def test_the_shared_colouring_reproduces_colored_digits():
    ds = colored_digits.load_colored_digits(conflict_ratio=0.02, seed=5)
    images, _ = colored_digits._digits()
    jitter_rng = np.random.default_rng(np.random.SeedSequence(5).spawn(3)[2])
    assert torch.equal(torch.from_numpy(colorize(images, lff_colours(ds.a, JITTER, jitter_rng))), ds.inputs)


def test_colored_mnist_offline_without_files_is_one_clear_error(tmp_path):
    with pytest.raises(GerneError) as err:
        load_colored_mnist(str(tmp_path), conflict_ratio=0.02)
    message = str(err.value)
    assert str(tmp_path) in message and "MNIST/raw" in message and "DFA-style" in message
    assert OFFLINE in message and "\n" not in message
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"junk")  # all four, junk
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "MNIST" / "raw" / name).write_bytes(b"junk")
    with pytest.raises(GerneError, match=r"the MNIST files in .*MNIST/raw are unreadable"):
        load_colored_mnist(str(tmp_path), conflict_ratio=0.02)


def test_offline_error_through_the_public_path(tmp_path):
    spec = {"name": "offline", "data": {"dataset": "colored_mnist", "root": str(tmp_path)},
            "storage": {"path": str(tmp_path / "runs")}}
    with pytest.raises(GerneError, match="downloading MNIST there failed"):
        train(spec)


# ---- generation: fake CIFAR-10 ----

def write_cifar(root, per_batch=40, n_test=40):
    """CIFAR-10's python release under root/cifar-10-batches-py: five training batches and a test batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(11)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        entry = {"batch_label": name, "labels": [i % K for i in range(n)],
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [b"x.png"] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(K)]}, f, protocol=2)
    return root


@pytest.fixture
def cifar_root(tmp_path):
    return write_cifar(tmp_path / "cifar")


def test_generated_corrupted_cifar10(cifar_root):
    ds = load_corrupted_cifar10(str(cifar_root), conflict_ratio=0.5, seed=1)
    assert ds.inputs.dtype == torch.uint8 and ds.inputs.shape == (240, 3, 32, 32)
    check_lff_protocol(ds, 0.5, n_train=18, n_val=2, n_test=4)
    originals = np.concatenate([cc.read_batch(cifar_root / "cifar-10-batches-py" / f)[0]
                                for f in (*cc.TRAIN_FILES, cc.TEST_FILE)])
    inputs = ds.inputs.numpy()
    for i in range(240):
        name = CORRUPTIONS[ds.a[i]]
        if "noise" in name:
            assert not np.array_equal(inputs[i], originals[i])
        else:  # deterministic corruptions: exactly the corruption of the original image
            assert np.array_equal(inputs[i:i + 1], corrupt(originals[i:i + 1], name, 4, None))
    assert torch.equal(load_corrupted_cifar10(str(cifar_root), conflict_ratio=0.5, seed=1).inputs, ds.inputs)


def test_cifar10_offline_without_files_is_one_clear_error(tmp_path):
    with pytest.raises(GerneError) as err:
        load_corrupted_cifar10(str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "cifar-10-batches-py" in message and OFFLINE in message


class Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_a_cifar_batch_cannot_run_code(cifar_root, tmp_path):
    marker = tmp_path / "ran"
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": Payload(marker), "labels": []}, f, protocol=2)
    with pytest.raises(GerneError, match=r"data_batch_3 is not a CIFAR-10 python batch file"):
        load_corrupted_cifar10(str(cifar_root))
    assert not marker.exists()


def test_corruptions_match_their_references():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    images[0, :, :4, :4] = 90  # grey
    images[0, :, 4:6, :4] = 0  # black
    x = images.astype(np.float32) / 255
    # pixelate: PIL's BOX down and up, within PIL's intermediate uint8 rounding
    pil = np.stack([np.asarray(Image.fromarray(im.transpose(1, 2, 0)).resize((24, 24), Image.Resampling.BOX)
                               .resize((32, 32), Image.Resampling.BOX)).transpose(2, 0, 1) for im in images])
    assert np.abs(corrupt(images, "pixelate", 4, None).astype(int) - pil).max() <= 1
    # gaussian blur: scipy.ndimage (what scikit-image's gaussian calls), mode nearest, truncate 4
    ref = gaussian_filter(x.astype(np.float64), sigma=(0, 0, 0.8, 0.8), mode="nearest", truncate=4.0)
    assert np.abs(cc._gaussian_blur(x, 0.8, None) - ref).max() < 1e-6
    # brightness and saturate: through HSV and back, pixel by pixel
    def via_hsv(change):
        out = np.empty_like(x)
        for n, i, j in np.ndindex(2, 32, 32):
            out[n, :, i, j] = colorsys.hsv_to_rgb(*change(*colorsys.rgb_to_hsv(*x[n, :, i, j])))
        return out

    bright = via_hsv(lambda h, s, v: (h, s, min(v + 0.2, 1.0)))
    assert np.abs(np.clip(cc._brightness(x, 0.2, None), 0, 1) - bright).max() < 1e-6
    saturated = via_hsv(lambda h, s, v: (h, min(s * 2 + 0.1, 1.0), v))
    assert np.abs(np.clip(cc._saturate(x, (2, 0.1), None), 0, 1) - saturated).max() < 1e-6
    # defocus: Hendrycks' disk of radius 1 is the 5-point cross; contrast keeps each channel's mean
    assert np.allclose(cc.disk_kernel(1, 0.2), np.pad([[0, .2, 0], [.2, .2, .2], [0, .2, 0]], 1), atol=1e-5)
    assert np.allclose(cc._contrast(x, 0.3, None).mean(axis=(2, 3)), x.mean(axis=(2, 3)), atol=1e-6)
    for name in CORRUPTIONS:  # each one changes the image
        assert not np.array_equal(corrupt(images, name, 4, np.random.default_rng(1)), images), name


# ---- one epoch through the public training path ----

def build_cifar_dfa(root):
    per_class(root / "2pct" / "align", 32, 2, 0)
    per_class(root / "2pct" / "conflict", 32, 1, 3, start=50)
    per_class(root / "valid", 32, 1, 1, start=100)
    per_class(root / "test", 32, 1, 2, start=150)
    return root


@pytest.mark.parametrize(
    "dataset, arch, source",
    [
        ("colored_mnist", "mlp", "dfa"),
        ("colored_mnist", "mlp", "generated"),
        ("corrupted_cifar10", "cnn", "dfa"),
        ("corrupted_cifar10", "cnn", "generated"),
        ("bffhq", "cnn", "dfa"),
    ],
)
def test_one_epoch_through_each_loader(dataset, arch, source, request, tmp_path):
    roots = {
        ("colored_mnist", "dfa"): lambda: request.getfixturevalue("cmnist_dfa"),
        ("colored_mnist", "generated"): lambda: write_mnist(tmp_path / "gen"),
        ("corrupted_cifar10", "dfa"): lambda: build_cifar_dfa(tmp_path / "c10c"),
        ("corrupted_cifar10", "generated"): lambda: write_cifar(tmp_path / "gen"),
        ("bffhq", "dfa"): lambda: request.getfixturevalue("bffhq_root"),
    }
    root = roots[dataset, source]()
    result = train({
        "name": f"epoch-{dataset}",
        "data": {"dataset": dataset, "root": str(root), "conflict_ratio": 0.02},
        "model": {"arch": arch, "hidden": 16},
        "method": {"name": "gerne", "c": 0.5, "beta": 0.0},
        "optim": {"epochs": 1, "batch_size_per_class": 2, "steps_per_epoch": 2},
        "storage": {"path": str(tmp_path / "runs")},
    })
    assert result["status"] == "completed"
