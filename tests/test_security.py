"""Nothing a user hands us runs as code: no eval, no imports by name, no unpickling of user files."""

import re
from pathlib import Path

import pytest
import torch

from gerne_ray.errors import GerneError
from gerne_ray.loop import load_state
from gerne_ray.spec import read_spec_file

PACKAGE = Path(__file__).resolve().parent.parent / "gerne_ray"


class Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 1, "payload": Payload(marker)}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_state(path)
    assert not marker.exists()
    torch.save({"epoch": 1, "model": {"w": torch.ones(2)}, "history": [{"epoch": 1, "loss": 0.5}]}, path)
    assert load_state(path)["history"][0]["loss"] == 0.5  # plain tensors and values still load


def test_yaml_tags_that_would_run_code_are_refused(tmp_path):
    marker = tmp_path / "ran"
    spec = tmp_path / "evil.yaml"
    spec.write_text(f'name: !!python/object/apply:pathlib.Path.touch [{str(marker)!r}]\n')
    with pytest.raises(GerneError, match="not valid YAML"):
        read_spec_file(spec)
    assert not marker.exists()


def test_the_package_has_no_eval_exec_unpickling_or_imports_by_name():
    banned = re.compile(
        r"(?<![\w.])(eval|exec|__import__)\(|importlib|pickle\.loads?\(|weights_only=False|yaml\.load\("
    )
    offenders = [f"{p.name}:{i}" for p in PACKAGE.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert offenders == []
