"""Job specs: defaults, overrides, and one-line errors that name the field and the fix."""

from pathlib import Path

import pytest
import yaml

from gerne_ray.demo import DEMO_SPEC, demo_spec
from gerne_ray.errors import GerneError
from gerne_ray.spec import JobSpec, load_spec

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def test_every_example_job_validates():
    paths = sorted(JOBS.glob("*.yaml"))
    assert paths, "jobs/ holds example specs"
    for path in paths:
        assert isinstance(load_spec(path), JobSpec)


def test_jobs_demo_yaml_is_the_embedded_demo_spec():
    assert load_spec(JOBS / "demo.yaml") == demo_spec()


def test_defaults_and_contract_keys():
    spec = load_spec({"name": "x"})
    assert (spec.data.dataset, spec.data.attributes, spec.model.arch, spec.model.pretrained) == (
        "colored_digits", "known", "mlp", False)
    assert spec.method.name == "gerne" and 0 < spec.method.c <= 1
    assert spec.optim.optimizer == "sgd" and spec.search.metric == "val_gba"
    assert spec.scaling.num_workers == 1 and spec.storage.path == "runs"
    assert spec.run_dir == Path("runs").absolute() / "x" and spec.folder.location == str(spec.run_dir)


def test_overrides_parse_values_as_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(DEMO_SPEC))
    spec = load_spec(path, ["method.beta=0.25", "optim.epochs=3", "model.arch=cnn", "data.root=/d"])
    assert (spec.method.beta, spec.optim.epochs, spec.model.arch, spec.data.root) == (0.25, 3, "cnn", "/d")


def test_json_specs_load(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"name": "j", "method": {"name": "erm"}}')
    assert load_spec(path).method.name == "erm"


BAD = [
    # (change to the demo spec as overrides, words the message must contain)
    (["methd.c=0.5"], ["methd", "unknown key", "method"]),
    (["method.cc=0.5"], ["method.cc", "unknown key", "c, beta"]),
    (["method.c=1.5"], ["method.c", "less than or equal to 1", "1.5"]),
    (["method.c=0"], ["method.c", "greater than 0"]),
    (["method.name=dro"], ["method.name", "'gerne'", "'erm'"]),
    (["optim.lr=fast"], ["optim.lr", "number"]),
    (["optim.batch_size_per_class=0"], ["optim.batch_size_per_class", "greater than 0"]),
    (["optim.epochs=-3"], ["optim.epochs", "greater than 0"]),
    (["data.dataset=imagenet"], ["data.dataset", "unknown dataset", "colored_digits", "synthetic"]),
    (["data.conflict_ratio=1.0"], ["data.conflict_ratio", "less than 1"]),
    (["model.arch=vgg"], ["model.arch", "'mlp'", "'resnet18'"]),
    (["search.metric=val_loss"], ["search.metric", "val_gba"]),
    (["name=../escape"], ["name", "pattern"]),
    (["optim=3"], ["optim", "dictionary"]),
    (["search.space.methods={groupdr: {eta: [0.01, 0.1]}}"], ["search.space.methods.groupdr", "groupdro"]),
    (["search.space.methods={jtt: {eta: [0.01, 0.1]}}"], ["search.space.methods.jtt.eta", "lambda_up"]),
    (["search.space.methods={gerne: {c: [0.1, 0.5]}}"], ["methods.gerne.c", "search.space.c"]),
    (["search.space.methods={jtt: {lambda_up: [0.5, 8]}}"], ["jtt.lambda_up", "0.5", "than or equal to 1"]),
    (["search.space.methods={dfr: {C: [1, 0.1]}}"], ["dfr.C", "[low, high]", "[1, 0.1]"]),
    (["search.space.methods={dfr: {C: [0, 1]}}"], ["dfr.C", "log-uniformly", "above 0"]),
]


@pytest.mark.parametrize(("overrides", "words"), BAD, ids=[o[0] for o, _ in BAD])
def test_bad_specs_give_one_line_naming_the_field(overrides, words):
    with pytest.raises(GerneError) as info:
        load_spec(DEMO_SPEC, overrides)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", ["empty"]),
        ("name: [unclosed", ["not valid YAML", "line"]),
        ("- a\n- b\n", ["list", "not a mapping"]),
        ("seed: 1\n", ["name", "required"]),
    ],
)
def test_bad_spec_files(tmp_path, content, words):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(GerneError) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_missing_and_huge_files(tmp_path):
    with pytest.raises(GerneError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\n" + "# padding\n" * 200_000)
    with pytest.raises(GerneError, match="too large"):
        load_spec(huge)


def test_bad_override_syntax():
    with pytest.raises(GerneError, match="key.path=value"):
        load_spec(DEMO_SPEC, ["method.beta"])
    with pytest.raises(GerneError, match="not a section"):
        load_spec(DEMO_SPEC, ["seed.x=1"])


PAPER = {  # dataset -> (arch, lr, batch per class, selection metric), gerne-method.md section 7
    "colored_mnist": ("mlp", 0.1, 100, "val_gba"),
    "corrupted_cifar10": ("resnet18", 1e-4, 100, "val_gba"),
    "bffhq": ("resnet18", 1e-4, 32, "val_minority"),
    "waterbirds": ("resnet50", 1e-4, 32, "val_wga"),
    "celeba": ("resnet50", 1e-4, 32, "val_wga"),
    "civilcomments": ("bert", 1e-5, 10, "val_wga"),
    "multinli": ("bert", 1e-5, 32, "val_wga"),
}
PAPER_C = {"colored_mnist": [0.5, 1.0], "corrupted_cifar10": [0.5, 1.0], "bffhq": [0.5, 1.0],
           "waterbirds": [0.5], "celeba": [0.5], "civilcomments": [1.0], "multinli": [0.5]}


def test_paper_benchmark_specs_validate_with_the_papers_settings():
    paths = sorted((JOBS / "paper").glob("*.yaml"))
    assert len(paths) == 21
    seen = set()
    for path in paths:
        spec = load_spec(path)
        arch, lr, batch, metric = PAPER[spec.data.dataset]
        unknown = spec.data.attributes == "unknown"
        assert path.stem.endswith(("_unknown", "_no_labels")) == unknown, path.name
        if unknown and spec.data.dataset == "colored_mnist":
            lr = 0.01  # the paper's Colored MNIST learning rate with unknown attributes
        if spec.data.attribute_labels == "none":
            metric = "val_worst_class"  # no attribute label anywhere: SubpopBench's selection
        assert (spec.model.arch, spec.optim.lr, spec.optim.batch_size_per_class, spec.search.metric) == (
            arch, lr, batch, metric), path.name
        assert spec.model.pretrained == (arch != "mlp") and spec.method.name == "gerne"
        # appendix F: SGD, momentum 0.9, weight decay 0.01; AdamW with weight decay 1e-4 for BERT
        optim = (spec.optim.optimizer, spec.optim.weight_decay)
        optim += (spec.optim.momentum,) if arch != "bert" else ()
        assert optim == (("adamw", 1e-4) if arch == "bert" else ("sgd", 0.01, 0.9)), path.name
        assert spec.search.space.c == PAPER_C[spec.data.dataset] and spec.search.final_seeds == 3, path.name
        seen.add(spec.data.dataset)
    assert seen == set(PAPER)
    for suffix in ("", "_unknown"):
        ratios = sorted(load_spec(p).data.conflict_ratio for p in paths
                        if p.name.startswith("colored_mnist") and p.stem.endswith(f"pct{suffix}"))
        assert ratios == [0.005, 0.01, 0.02, 0.05]
