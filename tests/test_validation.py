from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from metricface._validation import check_embeddings, check_labels, check_scalar


@pytest.mark.parametrize("bad", [True, "1", None, [1.0]])
def test_check_scalar_rejects_non_numbers(bad):
    with pytest.raises(TypeError, match="margin must be a real number"):
        check_scalar(bad, "margin")


def test_check_scalar_integer_rejects_float():
    with pytest.raises(TypeError, match="k must be an int, got float 2.0"):
        check_scalar(2.0, "k", integer=True)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_scalar_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="scale must be finite"):
        check_scalar(bad, "scale")


@given(st.floats(-10, 10), st.floats(-10, 10), st.floats(-10, 10))
def test_check_scalar_bounds_agree_with_comparisons(v, a, b):
    low, high = min(a, b), max(a, b)
    inside_closed = low <= v <= high
    inside_open = low < v < high
    if inside_closed:
        check_scalar(v, "x", low=low, high=high)
    else:
        with pytest.raises(ValueError, match=r"x must be in \["):
            check_scalar(v, "x", low=low, high=high)
    if inside_open:
        check_scalar(v, "x", low=low, high=high, low_inclusive=False, high_inclusive=False)
    else:
        with pytest.raises(ValueError, match=r"x must be in \("):
            check_scalar(v, "x", low=low, high=high, low_inclusive=False, high_inclusive=False)


def test_check_embeddings_messages():
    with pytest.raises(TypeError, match="embeddings must be a torch.Tensor, got list"):
        check_embeddings([[1.0]])
    with pytest.raises(TypeError, match="floating-point dtype, got torch.int64"):
        check_embeddings(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(batch, dim\), got shape \(3,\)"):
        check_embeddings(torch.zeros(3))
    with pytest.raises(ValueError, match=r"non-empty, got shape \(0, 4\)"):
        check_embeddings(torch.zeros(0, 4))
    x = torch.zeros(2, 3)
    assert check_embeddings(x) is x


def test_check_labels_messages():
    with pytest.raises(TypeError, match="integer dtype, got torch.float32"):
        check_labels(torch.zeros(3))
    with pytest.raises(ValueError, match=r"one entry per embedding \(4\), got 3"):
        check_labels(torch.zeros(3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"\[0, num_classes=5\), got a label 5"):
        check_labels(torch.tensor([0, 5]), 2, num_classes=5)
    with pytest.raises(ValueError, match=r"got a label -1"):
        check_labels(torch.tensor([-1, 2]), 2, num_classes=5)
    y = torch.tensor([0, 4])
    assert check_labels(y, 2, num_classes=5) is y


def test_as_tensor_converts_arrays_and_sequences():
    import numpy as np

    from metricface._validation import as_tensor

    t = torch.arange(3)
    assert as_tensor(t, "x") is t
    a = np.arange(4.0)
    converted = as_tensor(a, "x")
    assert converted.dtype == torch.float64 and converted.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert as_tensor([1, 2], "x").tolist() == [1, 2]
    with pytest.raises(TypeError, match="x must hold numbers, got a NumPy array of dtype <U1"):
        as_tensor(np.array(["a"]), "x")
    with pytest.raises(TypeError, match="x must be a torch.Tensor or a NumPy array, got dict"):
        as_tensor({}, "x")


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=16), min_size=1, max_size=20))
def test_check_finite_agrees_with_isfinite(values):
    from metricface._validation import check_finite

    t = torch.tensor(values, dtype=torch.float16)
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        with pytest.raises(
            ValueError, match=rf"scores must contain only finite values, got {bad} "
        ):
            check_finite(t, "scores")
    else:  # includes sums that overflow float16 although every entry is finite
        assert check_finite(t, "scores") is t


def test_check_label_array_accepts_lists_arrays_tensors():
    import numpy as np

    from metricface._validation import check_label_array

    for labels in ([3, 1, 2], np.array([3, 1, 2], dtype=np.uint8), torch.tensor([3, 1, 2])):
        out = check_label_array(labels)
        assert out.dtype == np.int64 and out.tolist() == [3, 1, 2]
    assert check_label_array([]).shape == (0,)
    with pytest.raises(TypeError, match="labels must have an integer dtype, got float64"):
        check_label_array([1.5])
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\), got shape \(1, 2\)"):
        check_label_array([[1, 2]])
    with pytest.raises(TypeError, match="labels must be a 1-D sequence"):
        check_label_array("abc")


def test_as_tensor_accepts_read_only_arrays_without_warning():
    """Read-only arrays are common inputs (``np.load(mmap_mode="r")``, pandas' copy-on-write
    ``to_numpy()``, ``np.broadcast_to``): they convert silently, and writing to the result
    cannot touch the caller's memory."""
    import warnings

    import numpy as np

    from metricface._validation import as_tensor
    from metricface.metrics import cmc_curve_from_scores

    a = np.arange(6.0)
    a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = as_tensor(a, "x")
        scores = np.broadcast_to(np.array([[0.9, 0.1]]), (2, 2))
        cmc = cmc_curve_from_scores(scores, torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert t.tolist() == a.tolist() and cmc.tolist() == [1.0, 1.0]
    t += 1
    assert a.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


class _ArrayLike:
    """Stands in for a pandas Series: no list, no ndarray, but an ``__array__`` method."""

    def __init__(self, values):
        self.values = values

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values, dtype=dtype)


def test_metrics_take_array_likes_such_as_a_pandas_series():
    from sklearn.metrics import roc_auc_score

    from metricface.metrics import equal_error_rate, roc_auc

    y, s = [0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    assert roc_auc(_ArrayLike(y), _ArrayLike(s)) == pytest.approx(roc_auc_score(y, s))
    assert equal_error_rate(_ArrayLike(y), _ArrayLike(s)) == equal_error_rate(y, s)
    with pytest.raises(TypeError, match="y_score must hold real numbers"):
        roc_auc(y, _ArrayLike(["a"] * 6))
