"""int8 tanh and sigmoid heads, exactly as TensorFlow Lite Micro's int8 TANH and LOGISTIC compute them.

An int8 -> int8 function is fully described by its 256 outputs, so the C and the simulator
keep a 256-entry table (lookup_s8) and only the way the table is filled has to follow TFLM.
TFLM does not evaluate tanh/sigmoid in floating point: it rescales the int8 input to a 32-bit
fixed-point number with 4 integer bits and runs gemmlowp's fixed-point tanh / logistic
(exp by a Taylor polynomial and a barrel shifter of constants, reciprocal by Newton-Raphson),
then rounds to the fixed output quantization (tanh 1/128 zero point 0, sigmoid 1/256 zero point
-128; TFLM ignores the output tensor's scale). Inputs at or beyond TFLM's "input radius"
saturate to -128 / 127 without evaluation; with coarse input scales that differs from the real
function (from a scale of 8 the radius is 0 and even q = zero point gives -128). A float64 table
differed from TFLM in about one table in seventeen over 2,150 random input quantizations,
mostly by one step. So this module re-implements TFLM's integer algorithm, offline, on Python
integers with int32 semantics, quirks included. Verified against the tflite-micro interpreter
on all 256 inputs at many input quantizations (tests/test_tflm_oracle.py).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .fixedpoint import INT32_MAX, INT32_MIN
from .ir import Activation
from .quantized_model import QuantParams, round_half_away

INPUT_INTEGER_BITS = 4  # TFLM rescales int8 inputs to Q4.27 fixed point
TABLE_OUTPUT_Q = {      # TFLite's fixed int8 output quantization of tanh and sigmoid
    Activation.TANH: QuantParams(float(np.float32(1 / 128)), 0),
    Activation.SIGMOID: QuantParams(float(np.float32(1 / 256)), -128),
}


# ------------------------------------------------------------------ int32 fixed-point helpers

def _wrap32(v: int) -> int:
    """Two's complement int32 wrap-around of plain add/sub (gemmlowp's non-saturating ops)."""
    return ((v + 2**31) % 2**32) - 2**31


def _high_mul(a: int, b: int) -> int:
    """SaturatingRoundingDoublingHighMul: (a * b + nudge) / 2^31, division truncating."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudged = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    q = abs(nudged) >> 31
    return q if nudged >= 0 else -q


def _rounding_divide_by_pot(x: int, exponent: int) -> int:
    """x / 2^exponent, rounding half away from zero."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def _saturating_shift_left(x: int, exponent: int) -> int:
    """SaturatingRoundingMultiplyByPOT with a positive exponent: x * 2^e, clamped to int32."""
    threshold = (1 << (31 - exponent)) - 1
    if x > threshold:
        return INT32_MAX
    if x < -threshold:
        return INT32_MIN
    return x << exponent


def _rescale(raw: int, from_integer_bits: int, to_integer_bits: int) -> int:
    """A fixed-point value moved to another number of integer bits, saturating / rounding."""
    exponent = from_integer_bits - to_integer_bits
    if exponent > 0:
        return _saturating_shift_left(raw, exponent)
    if exponent < 0:
        return _rounding_divide_by_pot(raw, -exponent)
    return raw


def _rounding_half_sum(a: int, b: int) -> int:
    total = a + b
    total += 1 if total >= 0 else -1
    return total // 2 if total >= 0 else -((-total) // 2)  # C division: truncate toward zero


# Constants of gemmlowp's fixed-point routines, as raw int32 values.
_ONE_Q0 = INT32_MAX                 # 1.0 in Q0.31 (saturated)
_ONE_Q2 = 1 << 29                   # 1.0 in Q2.29
_EXP_MINUS_ONE_EIGHTH = 1895147668  # exp(-1/8), Q0.31
_ONE_THIRD = 715827883              # 1/3, Q0.31
_FORTY_EIGHT_SEVENTEENTHS = 1515870810        # 48/17, Q2.29
_MINUS_THIRTY_TWO_SEVENTEENTHS = -1010580540  # -32/17, Q2.29
# exp(-2^e) for e = -2..4 in Q0.31: the barrel shifter of exp_on_negative_values.
_EXP_OF_MINUS_POWERS = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                        (2, 39332535), (3, 720401), (4, 242))


def _exp_on_quarter_interval(a: int) -> int:
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: Taylor expansion around -1/8."""
    x = _wrap32(a + (1 << 28))
    x2 = _high_mul(x, x)
    x3 = _high_mul(x2, x)
    x4 = _high_mul(x2, x2)
    x4_over_4 = _rounding_divide_by_pot(x4, 2)
    poly = _rounding_divide_by_pot(_wrap32(_high_mul(_wrap32(x4_over_4 + x3), _ONE_THIRD) + x2), 1)
    return _wrap32(_EXP_MINUS_ONE_EIGHTH + _high_mul(_EXP_MINUS_ONE_EIGHTH, _wrap32(x + poly)))


def _exp_on_negative_values(a: int, integer_bits: int) -> int:
    """exp(a) for a <= 0 given with `integer_bits` integer bits; result in Q0.31."""
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_quarter = _wrap32((a & (one_quarter - 1)) - one_quarter)
    result = _exp_on_quarter_interval(_rescale(a_mod_quarter_minus_quarter, integer_bits, 0))
    remainder = _wrap32(a_mod_quarter_minus_quarter - a)
    for exponent, multiplier in _EXP_OF_MINUS_POWERS:
        if integer_bits > exponent and remainder & (1 << (fractional_bits + exponent)):
            result = _high_mul(result, multiplier)
    if integer_bits > 5 and a < -(1 << (36 - integer_bits)):  # below -32: exp is 0
        result = 0
    return _ONE_Q0 if a == 0 else result


def _newton_reciprocal_of_half_denominator(a: int) -> int:
    """x ~ 1 / ((1 + a) / 2) in Q2.29 for a in (0, 1) Q0.31: three Newton-Raphson steps."""
    half_denominator = _rounding_half_sum(a, _ONE_Q0)
    x = _wrap32(_FORTY_EIGHT_SEVENTEENTHS + _high_mul(half_denominator, _MINUS_THIRTY_TWO_SEVENTEENTHS))
    for _ in range(3):
        one_minus = _wrap32(_ONE_Q2 - _high_mul(half_denominator, x))
        x = _wrap32(x + _rescale(_high_mul(x, one_minus), 4, 2))
    return x


def fixed_tanh(a: int, integer_bits: int) -> int:
    """gemmlowp tanh: raw int32 input with `integer_bits` integer bits -> tanh in Q0.31."""
    if a == 0:
        return 0
    negative_abs = a if a < 0 else _wrap32(-a)
    e = _exp_on_negative_values(negative_abs, integer_bits + 1)  # exp(-2|a|): same raw, one more bit
    t = _rescale(_wrap32(_newton_reciprocal_of_half_denominator(e) - _ONE_Q2), 2, 0)  # (1-e)/(1+e)
    return _wrap32(-t) if a < 0 else t


def fixed_logistic(a: int, integer_bits: int) -> int:
    """gemmlowp logistic: raw int32 input with `integer_bits` integer bits -> sigmoid in Q0.31."""
    if a == 0:
        return 1 << 30
    abs_a = a if a > 0 else _wrap32(-a)
    e = _exp_on_negative_values(_wrap32(-abs_a), integer_bits)  # exp(-|a|)
    positive = _rescale(_newton_reciprocal_of_half_denominator(e), 1, 0)  # 1 / (1 + e)
    return positive if a > 0 else _wrap32(_ONE_Q0 - positive)


# ------------------------------------------------------------------ TFLM's int8 kernels

def _input_rescale(input_scale: float) -> Tuple[int, int, int]:
    """TFLM's prepare: (multiplier, left shift, input radius) bringing int8 steps to Q4.27."""
    real = float(np.float32(input_scale)) * float(1 << (31 - INPUT_INTEGER_BITS))
    q, shift = math.frexp(real)
    multiplier = int(round_half_away(q * 2.0**31))
    multiplier = _wrap32(multiplier)  # the C++ static_cast<int32_t>; only q -> 1 reaches 2^31
    max_rescaled = ((1 << INPUT_INTEGER_BITS) - 1) * float(1 << (31 - INPUT_INTEGER_BITS)) / 2.0**shift
    return multiplier, shift, int(math.floor(max_rescaled))


def _multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    """TFLite's double-rounding MultiplyByQuantizedMultiplier on one int32 value."""
    left, right = max(shift, 0), max(-shift, 0)
    return _rounding_divide_by_pot(_high_mul(_wrap32(x * (1 << left)), multiplier), right)


def tflm_int8_activation(activation: Activation, input_q: QuantParams, q: int) -> int:
    """TFLM's int8 TANH / LOGISTIC of one int8 value q whose quantization is input_q."""
    multiplier, shift, radius = _input_rescale(input_q.scale)
    centred = q - input_q.zero_point
    if centred <= -radius:
        return -128
    if centred >= radius:
        return 127
    a = _multiply_by_quantized_multiplier(centred, multiplier, shift)  # Q4.27
    if activation == Activation.TANH:
        out = _rounding_divide_by_pot(fixed_tanh(a, INPUT_INTEGER_BITS), 31 - 7)  # to 1/128 steps
    else:
        out = _rounding_divide_by_pot(fixed_logistic(a, INPUT_INTEGER_BITS), 31 - 8) - 128  # 1/256, zp -128
    return min(max(out, -128), 127)


def tflm_int8_table(activation: Activation, input_q: QuantParams) -> Tuple[np.ndarray, QuantParams]:
    """The 256-entry int8 table (indexed by q + 128) of TFLM's int8 kernel, and its output quantization."""
    activation = Activation(activation)
    if activation not in TABLE_OUTPUT_Q:
        raise ValueError(f"no int8 table for activation {activation.value}")
    table = np.array([tflm_int8_activation(activation, input_q, q) for q in range(-128, 128)], dtype=np.int8)
    return table, TABLE_OUTPUT_Q[activation]
