"""The training step's NaN/Inf check (``_non_finite``): its one-sum fast path gives the elementwise answer."""

import pytest
import torch

from mindspeed_llm.training.training import _non_finite

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([1.0, -2.0, 3.5], torch.float32, None),
        ([1.0, INF, 3.0], torch.float32, "Inf"),
        ([1.0, INF, -INF], torch.float32, "Inf"),  # the sum is NaN: the elementwise test names it
        ([NAN, 1.0, INF], torch.float32, "NaN"),
        # Finite values whose float32 sum overflows: a check by the sum alone would stop the run.
        ([3e38, 3e38, 1.0], torch.float32, None),
        ([3e38, 3e38], torch.bfloat16, None),  # bf16 sums in float32: 6e38 overflows there too
        ([1.0, NAN], torch.bfloat16, "NaN"),
        ([1e308, 1e308], torch.float64, None),
    ],
)
def test_non_finite_matches_the_elementwise_test(values, dtype, expected):
    t = torch.tensor(values, dtype=torch.float64).to(dtype)
    assert _non_finite([t]) == expected
    assert _non_finite([None, torch.zeros(4), t]) == expected


def test_non_finite_over_several_tensors_names_nan_first():
    assert _non_finite([torch.tensor([INF]), torch.tensor([NAN])]) == "NaN"
    assert _non_finite([torch.ones(1000), torch.tensor([1.0, -INF])]) == "Inf"
    assert _non_finite([torch.tensor([1, 2, 3])]) is None  # integer tensors (loss counts) are finite
