"""The README stays true: its test command is the one CI runs, and its demo command names the CLI."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    blocks = _bash_blocks()
    assert len(blocks) == 2, blocks
    demo, tests = blocks
    assert demo.endswith("gerne-ray demo") and "\n" not in demo
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, "the README's test command must be a line of .ci/run, verbatim"


def test_readme_lists_every_cli_command():
    from gerne_ray.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        assert f"gerne-ray {name}" in readme, name


def test_the_readmes_own_method_registers_and_its_range_is_searched_and_replaceable():
    import optuna

    from gerne_ray import methods
    from gerne_ray.spec import load_spec

    (code,) = [b for b in re.findall(r"```python\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
               if "class Focal(" in b]
    scope: dict = {}
    exec(compile(code, "README.md (Focal)", "exec"), scope)  # the README's own example
    focal = methods.register(scope["Focal"])
    try:
        spec = load_spec({"name": "f", "method": {"name": "focal"}},
                         ["search.space.methods={focal: {gamma: [1, 2]}}"])
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        gammas = [focal.suggest(study.ask(), None, spec.search, spec.method)["gamma"] for _ in range(30)]
        assert 1 <= min(gammas) and max(gammas) <= 2
        assert max(focal.suggest(study.ask(), None, None, spec.method)["gamma"] for _ in range(30)) > 2
    finally:
        methods._loaded.pop("focal", None)
