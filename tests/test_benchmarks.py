"""The benchmarks run from a clone: everything they read ships with the repository."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


def test_quality_budgets_are_what_the_readme_says():
    quality = _load("quality")
    recipes = quality.recipes(__import__("torch").Generator().manual_seed(0))
    default, best = quality.featvis.Settings(), quality.featvis.Settings.take({"quality": "best"})
    assert default.max_iter * default.views == 128  # featvis's default: 128 one-view steps
    assert best.max_iter * best.views == quality.BUDGET == 512  # quality="best": 128 steps x 4 views
    lucid = recipes["lucid"]
    assert lucid["steps"] * lucid["views"] == 256  # Lucid's recipe as Lucent runs it: half the passes
    assert recipes["pixel"]["views"] * (quality.BUDGET // recipes["pixel"]["views"]) == 512
    readme = (ROOT / "README.md").read_text()
    assert "256 passes per image" in readme and "--equal-passes" in readme


def test_the_skip_gradient_scales_only_the_residual_branches_of_lite0():
    """`grid:sgm=G`: the gradient into each residual branch of Lite0 is G times the plain one, the
    skip's is not; the blocks without a skip (strided, or another width) are left alone."""
    import torch

    import featvis

    quality = _load("quality")
    assert quality.grid_recipe("grid:sgm=0.5") == {"skip_gradient": 0.5}
    model = featvis.zoo.efficientnet_lite0().model
    block = model._blocks[2]  # 24 -> 24 channels, stride 1: x = branch(x) + x
    x = torch.randn(1, 24, 16, 16, requires_grad=True)
    weight = torch.randn(1, 24, 16, 16)

    def gradients(gamma=None):
        handles = quality.skip_gradient_hooks(model, gamma) if gamma is not None else []
        x.grad = None
        (block(x) * weight).sum().backward()
        for handle in handles:
            handle.remove()
        return x.grad.clone(), len(handles)

    plain, _ = gradients()
    scaled, hooked = gradients(0.5)
    assert hooked == 9 and not block._bn2._forward_hooks
    skip_only = weight  # the skip passes the output's gradient straight to x
    torch.testing.assert_close(scaled - skip_only, 0.5 * (plain - skip_only), rtol=1e-4, atol=1e-5)
