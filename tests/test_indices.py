"""The one parser of index lists (`--chunks`, `--checkpoints`)."""

import pytest

from k2hf.errors import UserError
from k2hf.indices import format_index_list, parse_index_list, parse_selection


def test_numbers_and_inclusive_ranges_in_the_order_given():
    assert parse_index_list("3,4,10-12") == [3, 4, 10, 11, 12]
    assert parse_index_list("7") == [7] and parse_index_list(" 2 , 0-1") == [2, 0, 1]


@pytest.mark.parametrize("text", ["", "a", "3-", "5-2", "1,,2", "1.5"])
def test_anything_else_is_one_line_naming_the_text(text):
    with pytest.raises(UserError, match="is not a list of numbers such as 3,4,10-12"):
        parse_index_list(text)


def test_selection_mixes_numbers_ranges_and_names():
    assert parse_selection("1,3-4,step_0000012,ckpt_002") == [1, 3, 4, "step_0000012", "ckpt_002"]
    assert parse_selection("spike_001_step_0000022") == ["spike_001_step_0000022"]


@pytest.mark.parametrize("values", [[0, 1, 2, 5], [3], [9, 10, 4, 5, 6, 1], list(range(360))])
def test_formatting_is_the_parsers_inverse(values):
    assert parse_index_list(format_index_list(values)) == values
    assert format_index_list([0, 1, 2, 5]) == "0-2,5" and format_index_list([0, 1, 2, 5], ", ") == "0-2, 5"
    assert format_index_list(list(range(360))) == "0-359" and format_index_list([]) == ""
