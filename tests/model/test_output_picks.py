"""Picking the tensor featvis reads from a structured output, at the cases the 2026-12-07 mutation
sample found untested: a dict picked by index, a named tuple whose logits are not first."""

from collections import namedtuple

import pytest
import torch

from featvis.model.targets import select_output
from featvis.model.units import describe_axis

Output = namedtuple("Output", ["hidden", "logits"])


def test_a_dict_output_is_picked_by_index_in_its_order():
    output = {"logits": torch.ones(1, 3), "hidden": torch.zeros(1, 8)}
    assert select_output(output, 0) is output["logits"]
    assert select_output(output, 1) is output["hidden"]


def test_a_named_tuple_gives_its_logits_field_wherever_it_stands():
    output = Output(hidden=torch.zeros(1, 8), logits=torch.ones(1, 3))
    assert select_output(output) is output.logits
    assert select_output(output, "hidden") is output.hidden


@pytest.mark.parametrize(
    ("shape", "axis", "said"),
    [((4,), 1, "one value per image"), ((4, 10), 1, "axis 1 (10 units) of (N, 10)")],
)
def test_the_verbose_phrase_of_a_unit_axis(shape, axis, said):
    assert describe_axis(shape, axis) == said


class Transposed(torch.nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


@pytest.mark.parametrize(("token", "said"), [(None, "averaged over the other axes"), (0, "at token 0")])
def test_verbose_says_where_the_units_are_read(token, said, capsys):
    import featvis

    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 1), Transposed(), torch.nn.Linear(4, 6)).eval()
    featvis.visualize_activation(
        model, "2", 1, token=token, size=8, channels=1, input_range=(0.0, 1.0), max_iter=1, verbose=True
    )
    assert said in capsys.readouterr().out
