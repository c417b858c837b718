"""The README as a newcomer meets it: every Python code block runs as written (here on the CPU)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_python_block_of_the_readme_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i}", "exec"), {"__name__": "__readme__"})


def test_the_readme_points_only_inside_the_repository():
    # a newcomer has the repository, not the team's shared folder: every file the README names exists here
    text = README.read_text()
    assert "../shared" not in text
    root = README.parent
    for path in set(re.findall(r"`((?:docs|scripts|notebooks|benchmarks|kernels|tests)/[\w./-]+)`", text)):
        assert (root / path).exists(), f"the README names {path}, which is not in the repository"
    assert "docs/ARCHITECTURE.md" in text and (root / "docs/ARCHITECTURE.md").exists()
