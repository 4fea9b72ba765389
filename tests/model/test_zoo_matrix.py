"""The compatibility matrix as tests: every architecture of benchmarks/zoo_matrix.py (timm, Hugging Face,
torchvision; random weights, small sizes) through every entry point. One model per family runs in the
quick suite, the others are marked slow. An entry point must work, or give the featvis error listed
for it in `NAMED_ERRORS` (none are: every family works everywhere)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
import re
import sys

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("timm")
pytest.importorskip("transformers")


def _matrix():
    spec = importlib.util.spec_from_file_location("zoo_matrix", ROOT / "benchmarks" / "zoo_matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["zoo_matrix"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


matrix = _matrix()

# (case id, entry point) -> the named error featvis must give there (a regular expression)
NAMED_ERRORS: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=() if c.quick else pytest.mark.slow) for c in matrix.CASES]
)
def test_every_entry_point_works_on_the_architecture(case):
    row = matrix.run_case(case)
    assert "build_error" not in row, row["build_error"]
    problems = {}
    for entry in matrix.ENTRY_POINTS:
        result = row["results"][entry]
        expected = NAMED_ERRORS.get((case.id, entry))
        if expected is None and result["status"] == "works":
            continue
        if expected is not None and result["status"] == "error" and re.search(expected, result["detail"]):
            continue
        problems[entry] = f"{result['status']}: {result['detail']}"
    assert not problems, problems


def test_the_matrix_spans_the_families_it_promises():
    sources = [c.source for c in matrix.CASES]
    assert sources.count("timm") >= 40 and sources.count("hf") >= 8 and sources.count("torchvision") >= 15
    assert len({c.id for c in matrix.CASES}) == len(matrix.CASES)
    quick = {(c.source, c.family) for c in matrix.CASES if c.quick}
    assert len(quick) == sum(c.quick for c in matrix.CASES)  # one model per family in the quick suite
    families = {c.family for c in matrix.CASES if c.source == "timm"}
    for family in ("ResNet", "ViT", "Swin", "MaxViT", "MLP-Mixer", "LeViT", "Hiera", "NFNet", "FocalNet"):
        assert family in families


def test_the_published_table_lists_every_architecture_of_the_matrix():
    """docs/compatibility.md is written by the benchmark (--docs); rerun it when the cases change."""
    table = (ROOT / "docs" / "compatibility.md").read_text()
    missing = [c.id for c in matrix.CASES if f"`{c.id}`" not in table]
    assert not missing, f"rerun python benchmarks/zoo_matrix.py --docs docs/compatibility.md: {missing}"
    assert f"{len(matrix.CASES)} architectures tried" in table
