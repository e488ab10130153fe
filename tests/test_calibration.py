"""Calibration: recorded ranges against tensors computed independently (the float reference's
trace, and a separate numpy re-derivation of the LSTM), batching invariance, the percentile
method on data whose quantiles are known, progress reporting, and input-data validation."""

import math
import re

import numpy as np
import pytest

from lstm_edge.calibration import HISTOGRAM_BINS, calibrate, load_sequences
from lstm_edge.errors import InputDataError
from lstm_edge.reference import FloatTrace, forward
from model_factory import random_model, signal_like


# --------------------------------------------------------------- independent oracle (own numpy LSTM)

def numpy_lstm(layer, x):
    """Textbook LSTM with stacked [4H, .] matrices and the 1 / (1 + exp(-v)) sigmoid (the reference
    uses per-gate einsums and the tanh form of the sigmoid): returns h, c of shape [N, T, H]."""
    hidden = layer.hidden_size
    w = layer.w_x.astype(np.float64).reshape(4 * hidden, -1)
    r = layer.w_h.astype(np.float64).reshape(4 * hidden, hidden)
    b = layer.bias.astype(np.float64).reshape(4 * hidden)
    n, steps, _ = x.shape
    h = np.zeros((n, hidden))
    c = np.zeros((n, hidden))
    hs, cs = [], []
    for t in range(steps):
        z = x[:, t, :].astype(np.float64) @ w.T + h @ r.T + b
        zi, zf, zg, zo = np.split(z, 4, axis=1)
        i, f, o = (1.0 / (1.0 + np.exp(-v)) for v in (zi, zf, zo))
        c = f * c + i * np.tanh(zg)
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
    return np.stack(hs, axis=1), np.stack(cs, axis=1)


def numpy_dense(dense, x):
    pre = x @ dense.w.astype(np.float64).T + dense.b.astype(np.float64)
    post = {"none": pre, "relu": np.maximum(pre, 0.0), "tanh": np.tanh(pre),
            "sigmoid": 1.0 / (1.0 + np.exp(-pre))}[dense.activation.value]
    return pre, post


def span(a):
    return float(np.min(a)), float(np.max(a))


def as_pair(r):
    return r.min, r.max


# Own re-derivation vs the reference: same maths, different operation order and sigmoid formula, so
# the values agree to a few ulps per step (~1e-15 relative); 1e-9 absolute is far above that and far
# below any real range error.
RE_DERIVATION_ATOL = 1e-9


# --------------------------------------------------------------- minmax ranges

def test_minmax_ranges_equal_rederived_lstm_sequence_model(rng):
    model = random_model(3, [6], [(4, "relu")], sequence_output=True, seed=11)
    x = signal_like(rng, 30, 10, 3)
    ranges = calibrate(model, x)
    h, c = numpy_lstm(model.recurrent_layers[0], x)
    pre, post = numpy_dense(model.head[0], h)

    assert as_pair(ranges.input) == span(x)  # the input is recorded as given: exactly
    assert len(ranges.hidden) == len(ranges.cell) == 1
    assert len(ranges.dense_pre) == len(ranges.dense_out) == 1
    for got, want in ((ranges.hidden[0], h), (ranges.cell[0], c), (ranges.dense_pre[0], pre),
                      (ranges.dense_out[0], post)):
        assert as_pair(got) == pytest.approx(span(want), abs=RE_DERIVATION_ATOL)
    assert ranges.method == "minmax" and ranges.sequences == 30
    # relu: the post-activation range starts at 0 although the pre-activation range is negative
    assert ranges.dense_pre[0].min < 0 and ranges.dense_out[0].min == 0.0


def test_last_step_head_ranges_come_from_last_step_only(rng):
    model = random_model(2, [5], [(3, "tanh")], sequence_output=False, seed=5)
    x = signal_like(rng, 40, 12, 2, scale=2.0)
    x[:, -4:] = 0.0  # quiet last steps: the state relaxes, so the last step's range is narrower
    ranges = calibrate(model, x)
    h, c = numpy_lstm(model.recurrent_layers[0], x)
    pre_last, post_last = numpy_dense(model.head[0], h[:, -1])
    pre_all, _ = numpy_dense(model.head[0], h)

    # hidden and cell ranges still cover every step
    assert as_pair(ranges.hidden[0]) == pytest.approx(span(h), abs=RE_DERIVATION_ATOL)
    assert as_pair(ranges.cell[0]) == pytest.approx(span(c), abs=RE_DERIVATION_ATOL)
    assert as_pair(ranges.dense_pre[0]) == pytest.approx(span(pre_last), abs=RE_DERIVATION_ATOL)
    assert as_pair(ranges.dense_out[0]) == pytest.approx(span(post_last), abs=RE_DERIVATION_ATOL)
    # guard: the data makes the all-steps range clearly different, so the test can tell them apart
    assert abs(span(pre_all)[0] - span(pre_last)[0]) + abs(span(pre_all)[1] - span(pre_last)[1]) > 0.05


def test_minmax_ranges_equal_reference_trace_multi_layer(rng):
    """Plumbing of a deep model (flat order input / hidden[l] / cell[l] / pre[d] / out[d]): one batch
    runs exactly the computation of reference.forward, so the ranges are bit-identical."""
    model = random_model(4, [7, 5], [(6, "relu"), (2, "sigmoid")], sequence_output=True, seed=2)
    x = signal_like(rng, 25, 9, 4)
    ranges = calibrate(model, x, batch_size=256)
    trace = FloatTrace()
    forward(model, x, trace=trace, apply_softmax=False)
    assert as_pair(ranges.input) == span(x)
    assert [as_pair(r) for r in ranges.hidden] == [span(t) for t in trace.hidden]
    assert [as_pair(r) for r in ranges.cell] == [span(t) for t in trace.cell]
    assert [as_pair(r) for r in ranges.dense_pre] == [span(t) for t in trace.dense_pre]
    assert [as_pair(r) for r in ranges.dense_out] == [span(t) for t in trace.dense_out]
    # guard: hidden and cell ranges differ, so swapping them would be caught
    assert [as_pair(r) for r in ranges.hidden] != [as_pair(r) for r in ranges.cell]


def test_softmax_is_not_applied_before_recording(rng):
    """The compiled model emits logits: the last dense range must be the logits' range, not [0, 1]."""
    model = random_model(3, [6], [(4, "none")], sequence_output=False, seed=8, final_softmax="softmax")
    x = signal_like(rng, 30, 8, 3)
    ranges = calibrate(model, x)
    h, _ = numpy_lstm(model.recurrent_layers[0], x)
    pre, _ = numpy_dense(model.head[0], h[:, -1])
    assert as_pair(ranges.dense_out[0]) == pytest.approx(span(pre), abs=RE_DERIVATION_ATOL)
    assert ranges.dense_out[0].min < 0 or ranges.dense_out[0].max > 1


# --------------------------------------------------------------- batching

@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_batch_size_does_not_change_ranges(rng, method):
    model = random_model(3, [6, 4], [(3, "tanh")], sequence_output=True, seed=4)
    x = signal_like(rng, 40, 8, 3)
    one = calibrate(model, x, method=method, percentile=99.0, batch_size=1)
    odd = calibrate(model, x, method=method, percentile=99.0, batch_size=7)  # uneven last batch
    big = calibrate(model, x, method=method, percentile=99.0, batch_size=256)
    assert one == odd == big


# --------------------------------------------------------------- percentile

def test_percentile_ranges_lie_inside_minmax_ranges(rng):
    model = random_model(3, [8], [(4, "relu"), (2, "none")], sequence_output=True, seed=9)
    x = signal_like(rng, 60, 16, 3)
    mm = calibrate(model, x, method="minmax")
    pc = calibrate(model, x, method="percentile", percentile=99.0)
    pairs = [(mm.input, pc.input)] + list(zip(mm.hidden + mm.cell + mm.dense_pre + mm.dense_out,
                                              pc.hidden + pc.cell + pc.dense_pre + pc.dense_out))
    for m, p in pairs:
        assert m.min <= p.min <= p.max <= m.max
    # guard: at the 99th percentile some range really is narrower
    assert any(p.max < m.max or p.min > m.min for m, p in pairs)
    assert pc.method == "percentile"


def test_percentile_100_equals_minmax(rng):
    model = random_model(2, [5], [(3, "none")], sequence_output=True, seed=6)
    x = signal_like(rng, 20, 6, 2)
    mm = calibrate(model, x, method="minmax")
    pc = calibrate(model, x, method="percentile", percentile=100.0)
    for field in ("input", "hidden", "cell", "dense_pre", "dense_out"):
        assert getattr(pc, field) == getattr(mm, field)


def test_percentile_excludes_a_few_huge_outliers():
    """100,000 input values spread evenly over [-1, 1], then 30 replaced by +1000 and 20 by -500
    (0.05% in all, less than the 0.1% tails of the 99.9th percentile)."""
    rng = np.random.default_rng(7)
    values = rng.permutation(np.linspace(-1.0, 1.0, 100_000))
    spots = rng.choice(values.size, 50, replace=False)
    values[spots[:30]] = 1000.0
    values[spots[30:]] = -500.0
    x = values.astype(np.float32).reshape(4000, 25, 1)
    model = random_model(1, [2], seed=1)
    ranges = calibrate(model, x, method="percentile", percentile=99.9)

    # Independent oracle: numpy's quantiles of the same values. The calibration histogram has 4096
    # equal bins over [min, max] = [-500, 1000]; it returns the lower edge of the bin holding the
    # 0.1% quantile and the upper edge of the bin holding the 99.9% quantile, so each bound is off
    # by at most one bin width, on the outer side (plus the 2e-5 spacing of neighbouring values,
    # by which np.quantile's interpolation can differ from the order statistic).
    flat = x.astype(np.float64).ravel()
    q_lo, q_hi = np.quantile(flat, [0.001, 0.999])
    bin_width = (1000.0 + 500.0) / HISTOGRAM_BINS  # 0.366
    slack = 1e-4
    assert q_lo - bin_width - slack <= ranges.input.min <= q_lo + slack
    assert q_hi - slack <= ranges.input.max <= q_hi + bin_width + slack
    assert -1.5 < ranges.input.min < -0.5 and 0.5 < ranges.input.max < 1.5  # the outliers are out
    # while minmax keeps them
    mm = calibrate(model, x, method="minmax")
    assert (mm.input.min, mm.input.max) == (-500.0, 1000.0)


def test_percentile_of_constant_tensor_keeps_its_range():
    model = random_model(2, [3], seed=0)
    x = np.zeros((5, 4, 2), dtype=np.float32)
    pc = calibrate(model, x, method="percentile", percentile=99.0)
    assert (pc.input.min, pc.input.max) == (0.0, 0.0)


# --------------------------------------------------------------- argument checks and progress

def test_calibrate_rejects_unknown_method(rng):
    model = random_model(2, [3], seed=0)
    with pytest.raises(InputDataError, match="kmeans"):
        calibrate(model, signal_like(rng, 2, 3, 2), method="kmeans")


@pytest.mark.parametrize("p", [50.0, 49.0, 0.0, 100.0001, 150.0, -99.9, math.nan])
def test_calibrate_rejects_percentile_outside_50_100(rng, p):
    model = random_model(2, [3], seed=0)
    with pytest.raises(InputDataError, match="percentile"):
        calibrate(model, signal_like(rng, 2, 3, 2), method="percentile", percentile=p)


@pytest.mark.parametrize("p", [50.001, 99.99, 100.0])
def test_calibrate_accepts_percentile_inside_50_100(rng, p):
    model = random_model(2, [3], seed=0)
    calibrate(model, signal_like(rng, 4, 3, 2), method="percentile", percentile=p)


@pytest.mark.parametrize("method, expected", [
    ("minmax", [(3, 10), (6, 10), (9, 10), (10, 10)]),
    ("percentile", [(3, 20), (6, 20), (9, 20), (10, 20), (13, 20), (16, 20), (19, 20), (20, 20)]),
])
def test_progress_counts_increase_to_total(rng, method, expected):
    model = random_model(2, [3], seed=0)
    calls = []
    calibrate(model, signal_like(rng, 10, 4, 2), method=method, batch_size=3,
              progress=lambda done, total: calls.append((done, total)))
    assert calls == expected  # hand-worked: 10 sequences in batches of 3, one or two passes
    done = [d for d, _ in calls]
    assert all(a < b for a, b in zip(done, done[1:]))
    assert calls[-1][0] == calls[-1][1]


# --------------------------------------------------------------- load_sequences

def _one_line(exc_info):
    message = str(exc_info.value)
    assert "\n" not in message and message.strip()
    return message


def test_npy_is_memory_mapped(tmp_path, rng):
    data = signal_like(rng, 6, 5, 3)
    path = tmp_path / "calib.npy"
    np.save(path, data)
    got = load_sequences(path, 3)
    assert isinstance(got, np.memmap) or isinstance(got.base, np.memmap)
    assert got.shape == (6, 5, 3)
    assert np.array_equal(np.asarray(got), data)


def test_npz_with_key_x_among_others(tmp_path, rng):
    data = signal_like(rng, 4, 5, 3)
    path = tmp_path / "d.npz"
    np.savez(path, y=np.arange(4), x=data, extra=np.zeros((2, 2)))
    assert np.array_equal(load_sequences(path, 3), data)


def test_npz_with_single_other_key(tmp_path, rng):
    data = signal_like(rng, 4, 5, 3)
    path = tmp_path / "d.npz"
    np.savez(path, features=data)
    assert np.array_equal(load_sequences(path, 3), data)


def test_npz_with_several_keys_but_no_x(tmp_path, rng):
    path = tmp_path / "d.npz"
    np.savez(path, a=signal_like(rng, 4, 5, 3), b=signal_like(rng, 4, 5, 3))
    with pytest.raises(InputDataError) as exc:
        load_sequences(path, 3)
    message = _one_line(exc)
    assert "'x'" in message and "'a'" in message and "'b'" in message


def test_two_dimensional_array_is_one_sequence(tmp_path, rng):
    data = signal_like(rng, 1, 7, 3)[0]  # [T, F]
    path = tmp_path / "one.npy"
    np.save(path, data)
    got = load_sequences(path, 3)
    assert got.shape == (1, 7, 3)
    assert np.array_equal(np.asarray(got)[0], data)


def test_integer_data_is_accepted(tmp_path):
    path = tmp_path / "int.npy"
    np.save(path, np.arange(24, dtype=np.int16).reshape(2, 4, 3))
    assert load_sequences(path, 3).shape == (2, 4, 3)


@pytest.mark.parametrize("shape, input_size, pattern", [
    ((2, 4, 5), 3, r"5 features per step.*expects 3"),
    ((4, 5), 3, r"not \[N, T, F\]"),          # 2-D but F does not match: not one sequence either
    ((12,), 3, r"\(12,\).*not \[N, T, F\]"),
    ((2, 3, 4, 3), 3, r"\(2, 3, 4, 3\).*not \[N, T, F\]"),
    ((0, 4, 3), 3, r"no steps"),
    ((2, 0, 3), 3, r"no steps"),
])
def test_wrong_shapes_are_rejected(tmp_path, shape, input_size, pattern):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, dtype=np.float32))
    with pytest.raises(InputDataError) as exc:
        load_sequences(path, input_size)
    message = _one_line(exc)
    assert re.search(pattern, message), message
    assert "bad.npy" in message


@pytest.mark.parametrize("array", [np.array([[["a", "b"]]]), np.zeros((2, 3, 2), dtype=bool),
                                   np.zeros((2, 3, 2), dtype=np.complex64)], ids=["str", "bool", "complex"])
def test_non_numeric_data_is_rejected(tmp_path, array):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(InputDataError) as exc:
        load_sequences(path, 2)
    assert "not numeric" in _one_line(exc)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_value_is_located(tmp_path, rng, bad):
    data = signal_like(rng, 6, 8, 3)
    data[3, 5, 1] = bad
    path = tmp_path / "bad.npy"
    np.save(path, data)
    with pytest.raises(InputDataError) as exc:
        load_sequences(path, 3)
    message = _one_line(exc)
    assert "NaN or Inf" in message
    assert re.search(r"sequence 3\b.*step 5\b.*feature 1\b", message), message


def test_non_finite_value_located_beyond_first_chunk(tmp_path):
    """The check runs in chunks of sequences: the reported index is global, not within the chunk."""
    data = np.zeros((5000, 2, 2), dtype=np.float32)
    data[4500, 1, 0] = np.nan
    path = tmp_path / "big.npy"
    np.save(path, data)
    with pytest.raises(InputDataError) as exc:
        load_sequences(path, 2)
    assert re.search(r"sequence 4500\b.*step 1\b.*feature 0\b", _one_line(exc))


def test_non_finite_in_npz(tmp_path, rng):
    data = signal_like(rng, 3, 4, 2)
    data[2, 0, 1] = np.nan
    path = tmp_path / "d.npz"
    np.savez(path, x=data)
    with pytest.raises(InputDataError) as exc:
        load_sequences(path, 2)
    assert re.search(r"sequence 2\b.*step 0\b.*feature 1\b", _one_line(exc))


def test_missing_file(tmp_path):
    with pytest.raises(InputDataError) as exc:
        load_sequences(tmp_path / "nope.npy", 3)
    message = _one_line(exc)
    assert "nope.npy" in message and "no such file" in message


@pytest.mark.parametrize("name", ["junk.npy", "junk.npz"])
def test_unreadable_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not numpy data\n" * 4)
    with pytest.raises(InputDataError) as exc:
        load_sequences(path, 3)
    assert name in _one_line(exc)
