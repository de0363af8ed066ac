"""The CIFAR-10 recipes of benchmarks/cifar_recipe.py: they parse, and one tiny epoch runs.

The real recipes need a GPU and the CIFAR archive; here each one is resolved
into a training configuration and run for one tiny CPU epoch on an archive
generated in the official format.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from neurode.app.train.classify import TrainConfig
from neurode.app.train.cli import build_parser, config_from_args

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "cifar_recipe", ROOT / "benchmarks" / "cifar_recipe.py"
)
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)


@pytest.mark.parametrize("name", sorted(recipe.RECIPES))
def test_recipe_parses_into_a_valid_config(name):
    for gradient, argv in recipe.commands(name, "data", "runs/x"):
        cfg = config_from_args(build_parser().parse_args(argv)).resolved()
        assert isinstance(cfg, TrainConfig)
        assert cfg.data == "cifar10" and cfg.gradient == gradient
        assert cfg.epochs == 350 and cfg.batch_size == 256 and cfg.milestones == (150, 250)
        assert cfg.augment == "crop,flip" and cfg.device == "cuda"
    exp = recipe.RECIPES[name]["expected"]
    assert set(exp) <= set(recipe.RECIPES[name]["gradients"])
    assert all(0 < v <= 100 for v in exp.values())


def test_anode_resnet10_expects_the_papers_numbers():
    assert recipe.RECIPES["anode-resnet10"]["expected"] == {"checkpoint": 88.6, "adjoint": 67.9}


def test_print_lists_one_command_per_gradient(capsys):
    assert recipe.main(["all", "--print", "--data-dir", "/d"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n = sum(len(r["gradients"]) for r in recipe.RECIPES.values())
    assert len(lines) == n and all(line.startswith("neurode train ") for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(recipe.RECIPES))
def test_one_tiny_epoch_on_a_generated_archive(tmp_path, name):
    from test_data import make_cifar

    make_cifar(tmp_path, "cifar10", n_per_batch=8)
    out = tmp_path / "runs"
    rc = recipe.main([name, "--tiny", "--data-dir", str(tmp_path), "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / name / "summary.json").read_text())
    assert summary["tiny"] is True
    for g in recipe.RECIPES[name]["gradients"]:
        res = summary["results"][g]
        assert res["rc"] == 0 and res["epochs"] == 1 and 0 <= res["test_acc"] <= 100
