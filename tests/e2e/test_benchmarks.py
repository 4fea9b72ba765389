"""The benchmarks run from a clone: everything they read ships with the repository."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_benchmark_reads_its_classes_from_the_repository():
    quality = _load("quality")
    path = Path(quality.DEFAULT_CLASSES)
    assert path.resolve().is_relative_to(ROOT)
    classes = [int(line) for line in path.read_text().split()]
    assert len(classes) == len(set(classes)) == 20 and all(0 <= c < 1000 for c in classes)
    hard = [int(line) for line in (ROOT / "benchmarks/hard_classes.txt").read_text().split()]
    assert set(hard) <= set(classes)  # the quick comparison set is a subset of the benchmark's


def test_quality_budgets_are_the_documented_pass_counts():
    quality = _load("quality")
    recipes = quality.recipes(__import__("torch").Generator().manual_seed(0))
    default, best = quality.featvis.Settings(), quality.featvis.Settings.take({"quality": "best"})
    assert default.max_iter * default.views == 128  # featvis's default: 128 one-view steps
    assert best.max_iter * best.views == quality.BUDGET == 512  # quality="best": 128 steps x 4 views
    lucid = recipes["lucid"]
    assert lucid["steps"] * lucid["views"] == 256  # Lucid's recipe as Lucent runs it: half the passes
    assert recipes["pixel"]["views"] * (quality.BUDGET // recipes["pixel"]["views"]) == 512


def test_the_skip_gradient_is_a_recipe_key():
    assert _load("quality").grid_recipe("grid:sgm=0.5") == {"skip_gradient": 0.5}
