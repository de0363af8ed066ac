"""The README's Python examples run, and what they claim in comments holds."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert _blocks(), "the README should show Python examples"


@pytest.mark.parametrize("index", range(len(_blocks())))
def test_readme_example_runs(index, capsys):
    import torch

    torch.manual_seed(0)
    exec(compile(_blocks()[index], f"README.md[python block {index}]", "exec"), {})
    out = capsys.readouterr().out
    # The quick start's printed claims: the output shape and ALF's one evaluation per step.
    if "torch.Size([5, 2])" in _blocks()[index]:
        assert "torch.Size([5, 2])" in out
        assert "51 51" in out
