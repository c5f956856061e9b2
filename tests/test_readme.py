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
