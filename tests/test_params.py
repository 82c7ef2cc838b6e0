import pytest

from labs_lib import params


@pytest.mark.parametrize("value", [0, -3, 2.0, "4", None, True])
def test_positive_int_rejects_and_names_parameter(value):
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 1"):
        params.positive_int("batch_size", value)


def test_range_and_choice_messages_list_allowed_values():
    with pytest.raises(ValueError, match=r"block_size must be an int in \[1, 256\], got 512"):
        params.int_in_range("block_size", 512, 1, 256)
    with pytest.raises(ValueError, match=r"dtype must be one of \['bf16', 'fp32'\], got 'fp64'"):
        params.choice("dtype", "fp64", ["bf16", "fp32"])
    with pytest.raises(ValueError, match=r"util must be a number in \(0, 1.0\]"):
        params.positive_float("util", 1.5, hi=1.0)


@pytest.mark.parametrize("values", [[], "12", [1, 0], [1, 2.5], 7])
def test_positive_ints(values):
    with pytest.raises(ValueError, match="sizes must be a non-empty list"):
        params.positive_ints("sizes", values)
