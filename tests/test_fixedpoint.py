"""Integer primitives: the vectorized numpy versions against a scalar, line-by-line restatement
of TFLite's reference (MultiplyByQuantizedMultiplier, int16 Logistic/Tanh) and hand-worked cases."""

import math

import numpy as np
import pytest

from lstm_edge import fixedpoint as fp

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# --------------------------------------------------------------- scalar oracle (plain Python ints)

def srdhm_oracle(a, b):
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    num = ab + nudge
    q = abs(num) // (1 << 31)  # C division truncates toward zero
    return q if num >= 0 else -q


def rdbpot_oracle(x, e):
    mask = (1 << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def mbqm_oracle(x, m, s):
    return rdbpot_oracle(srdhm_oracle(x * (1 << max(s, 0)), m), max(-s, 0))


def table(k):
    return int(fp.SIGMOID_TABLE_UINT16[k])


def sigmoid_oracle(x):
    a = 3 * x
    u = abs(a)
    k = u >> 9
    r = 32767 << 10 if k >= 255 else (table(k) << 9) + (u & 511) * (table(k + 1) - table(k))
    return (r + 512) >> 10 if a >= 0 else ((1 << 25) - r + 512 - 1) >> 10


def tanh_oracle(x, shift):
    a = x * 3 * (1 << shift) if shift >= 0 else (3 * x + (1 << (-shift - 1))) >> -shift
    u = abs(a)
    k = u >> 8
    r = 65535 << 8 if k >= 255 else (table(k) << 8) + (u & 255) * (table(k + 1) - table(k))
    return (r - (1 << 23) + 128) >> 8 if a >= 0 else (-r + (1 << 23) + 128 - 1) >> 8


# --------------------------------------------------------------- tests

def test_quantize_multiplier_hand_worked():
    assert fp.quantize_multiplier(0.5) == (1 << 30, 0)
    assert fp.quantize_multiplier(1.0) == (1 << 30, 1)
    assert fp.quantize_multiplier(2.0 ** -15) == (1 << 30, -14)
    assert fp.quantize_multiplier(0.75) == (3 << 29, 0)
    assert fp.quantize_multiplier(0.0) == (0, 0)
    # 1 - 2^-40 rounds up to 2^31 and must renormalise to (2^30, shift + 1)
    assert fp.quantize_multiplier(1 - 2.0 ** -40) == (1 << 30, 1)


@pytest.mark.parametrize("real", [1e-6, 3.3e-4, 0.0123, 0.4999, 0.7071, 1.5, 7.9, 100.25])
def test_quantize_multiplier_represents_the_factor(real):
    m, s = fp.quantize_multiplier(real)
    assert (1 << 30) <= m < (1 << 31)
    assert abs(m * 2.0 ** (s - 31) - real) <= real * 2.0 ** -31


def test_rounding_hand_worked():
    # RoundingDivideByPOT rounds half away from zero.
    assert [int(fp.rounding_divide_by_pot(v, 1)) for v in (3, -3, 5, -5, 4, -4)] == [2, -2, 3, -3, 2, -2]
    # 2^-15 applied to 2^15 * k is exactly k. 0.5 applied to 3 gives 1.5 -> 2, but to -3 gives -1:
    # the doubling high multiply's nudge (1 - 2^30 for negatives) rounds a negative tie toward zero.
    m, s = fp.quantize_multiplier(2.0 ** -15)
    assert int(fp.multiply_by_quantized_multiplier(7 << 15, m, s)) == 7
    m, s = fp.quantize_multiplier(0.5)
    assert int(fp.multiply_by_quantized_multiplier(3, m, s)) == 2
    assert int(fp.multiply_by_quantized_multiplier(-3, m, s)) == -1
    assert int(fp.saturating_rounding_doubling_high_mul(INT32_MIN, INT32_MIN)) == INT32_MAX


def test_multiply_by_quantized_multiplier_matches_scalar_oracle():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.integers(-(2**24), 2**24, 3000), rng.integers(-300, 300, 1000),
                        [0, 1, -1, 2**20, -(2**20)]])
    for real in (2.0 ** -15, 2.0 ** -30 / 2.0 ** -11, 0.000731, 0.0421, 0.3, 0.9999, 1.7, 3.9):
        m, s = fp.quantize_multiplier(real)
        limit = INT32_MAX >> max(s, 0)
        xs = np.clip(x, -limit, limit)
        got = fp.multiply_by_quantized_multiplier(xs, m, s)
        want = np.array([mbqm_oracle(int(v), m, s) for v in xs])
        assert np.array_equal(got, want), real


def test_per_channel_multipliers_broadcast_like_scalars():
    rng = np.random.default_rng(3)
    reals = [0.01, 0.7, 2.5]
    ms = np.array([fp.quantize_multiplier(r)[0] for r in reals])
    ss = np.array([fp.quantize_multiplier(r)[1] for r in reals])
    x = rng.integers(-(2**20), 2**20, (50, 3))
    got = fp.multiply_by_quantized_multiplier(x, ms, ss)
    want = np.array([[mbqm_oracle(int(v), int(ms[c]), int(ss[c])) for c, v in enumerate(row)] for row in x])
    assert np.array_equal(got, want)


def test_sigmoid_all_inputs_match_scalar_oracle_and_float():
    x = np.arange(-32768, 32768)
    got = fp.sigmoid_q15(x)
    sample = x[::97]
    assert np.array_equal(got[::97], [sigmoid_oracle(int(v)) for v in sample])
    # Accuracy against the real function: the 256-entry table is good to about 2^-11.
    exact = 1 / (1 + np.exp(-x / 4096.0))
    assert np.max(np.abs(got / 32768.0 - exact)) < 2e-3
    assert got.min() >= 0 and got.max() <= 32767
    assert np.all(np.diff(got) >= 0)  # monotone


@pytest.mark.parametrize("shift", [-3, -2, -1, 0, 1, 2, 3, 5])
def test_tanh_all_inputs_match_scalar_oracle_and_float(shift):
    x = np.arange(-32768, 32768)
    got = fp.tanh_q15(x, shift)
    assert np.array_equal(got[::89], [tanh_oracle(int(v), shift) for v in x[::89]])
    exact = np.tanh(x * 2.0 ** (shift - 12))
    assert np.max(np.abs(got / 32768.0 - exact)) < 4e-3
    assert got.min() >= -32768 and got.max() <= 32767
    assert np.all(np.diff(got) >= 0)


def test_effective_scale_uses_float32_scales():
    s1, s2 = 0.1, 0.3  # not representable: the float32 values are what TFLite multiplies
    assert fp.effective_scale(s1, s2, divisor=2.0 ** -12) == float(np.float32(s1)) * float(np.float32(s2)) * 4096
    assert math.isclose(fp.effective_scale(s1, s2, divisor=1.0), 0.03, rel_tol=1e-6)
