"""Integer primitives of the TFLite-Micro int8x8_16 LSTM, vectorized with numpy.

Each function here has a twin of the same name in templates/kernels/*.c; the simulator uses
only these. Arrays are int64 inside so intermediate products never wrap; every value is
brought back to its C type's range exactly where the C code does (sat16, sat8, int32 results).
See docs/arithmetic.md and ../shared/docs/integer-lstm.md for the formulas.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

# TFLite-Micro's sigmoid table: about 65536 * sigmoid(k / 24), k = 0..255, as TFLM ships it
# (several entries are one above the rounded formula, so the table is data, not a formula).
SIGMOID_TABLE_UINT16 = np.array([
    32768, 33451, 34133, 34813, 35493, 36169, 36843, 37513, 38180, 38841, 39498, 40149, 40794, 41432, 42064, 42688,
    43304, 43912, 44511, 45102, 45683, 46255, 46817, 47369, 47911, 48443, 48964, 49475, 49975, 50464, 50942, 51409,
    51865, 52311, 52745, 53169, 53581, 53983, 54374, 54755, 55125, 55485, 55834, 56174, 56503, 56823, 57133, 57433,
    57724, 58007, 58280, 58544, 58800, 59048, 59288, 59519, 59743, 59959, 60168, 60370, 60565, 60753, 60935, 61110,
    61279, 61441, 61599, 61750, 61896, 62036, 62172, 62302, 62428, 62549, 62666, 62778, 62886, 62990, 63090, 63186,
    63279, 63368, 63454, 63536, 63615, 63691, 63765, 63835, 63903, 63968, 64030, 64090, 64148, 64204, 64257, 64308,
    64357, 64405, 64450, 64494, 64536, 64576, 64614, 64652, 64687, 64721, 64754, 64786, 64816, 64845, 64873, 64900,
    64926, 64950, 64974, 64997, 65019, 65039, 65060, 65079, 65097, 65115, 65132, 65149, 65164, 65179, 65194, 65208,
    65221, 65234, 65246, 65258, 65269, 65280, 65291, 65301, 65310, 65319, 65328, 65337, 65345, 65352, 65360, 65367,
    65374, 65381, 65387, 65393, 65399, 65404, 65410, 65415, 65420, 65425, 65429, 65433, 65438, 65442, 65445, 65449,
    65453, 65456, 65459, 65462, 65465, 65468, 65471, 65474, 65476, 65479, 65481, 65483, 65485, 65488, 65489, 65491,
    65493, 65495, 65497, 65498, 65500, 65501, 65503, 65504, 65505, 65507, 65508, 65509, 65510, 65511, 65512, 65513,
    65514, 65515, 65516, 65517, 65517, 65518, 65519, 65520, 65520, 65521, 65522, 65522, 65523, 65523, 65524, 65524,
    65525, 65525, 65526, 65526, 65526, 65527, 65527, 65528, 65528, 65528, 65529, 65529, 65529, 65529, 65530, 65530,
    65530, 65530, 65531, 65531, 65531, 65531, 65531, 65532, 65532, 65532, 65532, 65532, 65532, 65533, 65533, 65533,
    65533, 65533, 65533, 65533, 65533, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65534, 65535,
], dtype=np.int64)


# ---------------------------------------------------------------- offline (compile time)

def quantize_multiplier(real: float) -> Tuple[int, int]:
    """Real factor -> (M, S) with real = M * 2^(S-31), M in [2^30, 2^31) (TFLite QuantizeMultiplier)."""
    if real == 0.0:
        return 0, 0
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"multiplier must be finite and positive, got {real}")
    q, shift = math.frexp(real)
    m = int(math.floor(q * (1 << 31) + 0.5))  # std::round: half away from zero (q > 0)
    if m == (1 << 31):
        m //= 2
        shift += 1
    if shift < -31:  # too small to represent: TFLite flushes to zero
        return 0, 0
    return m, shift


def effective_scale(*factors_over_divisor: float, divisor: float) -> float:
    """Product of float32 scales divided by a float32 scale, computed in double as TFLM does."""
    product = 1.0
    for f in factors_over_divisor:
        product *= float(np.float32(f))
    return product / float(np.float32(divisor))


# ---------------------------------------------------------------- run time (twins of the C kernels)

def saturate_int16(v):
    return np.clip(v, INT16_MIN, INT16_MAX)


def saturate_int8(v):
    return np.clip(v, INT8_MIN, INT8_MAX)


def clip_gate(gate_clip: int, pre):
    """ONNX clip: a gate's pre-activation bounded to +-gate_clip before its activation (0: none)."""
    return np.clip(pre, -gate_clip, gate_clip) if gate_clip > 0 else pre


def _div_pow2_toward_zero(p, n: int):
    """p / 2^n truncated toward zero (C integer division), for int64 arrays."""
    return np.where(p >= 0, p >> n, -((-p) >> n))


def saturating_rounding_doubling_high_mul(a, b):
    """(a * b * 2 + 2^31) / 2^32, rounding to nearest; the INT32_MIN * INT32_MIN case saturates."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    result = _div_pow2_toward_zero(ab + nudge, 31)
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    return np.where(overflow, INT32_MAX, result)


def rounding_divide_by_pot(x, exponent):
    """x / 2^exponent rounded to nearest, ties away from zero (exponent may be a per-channel array)."""
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x, multiplier: int, shift: int):
    """TFLite MultiplyByQuantizedMultiplier: x * M * 2^(shift-31), double rounding.

    The quantizer guarantees x * 2^max(shift, 0) fits in int32 (see quantizer.check_accumulator_bounds).
    `multiplier` and `shift` may be per-channel arrays broadcast against x.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(x << left, multiplier), right)


def sigmoid_q15(x):
    """int16 Q3.12 -> sigmoid in Q0.15, TFLM's table interpolation (input multiplier 3, no shift)."""
    a = np.asarray(x, dtype=np.int64) * 3
    u = np.abs(a)
    k = u >> 9
    r = u & 0x1FF
    kk = np.minimum(k, 254)
    interpolated = (SIGMOID_TABLE_UINT16[kk] << 9) + r * (SIGMOID_TABLE_UINT16[kk + 1] - SIGMOID_TABLE_UINT16[kk])
    big = np.where(k >= 255, 0x7FFF << 10, interpolated)
    result = np.where(a >= 0, big + (1 << 9), (1 << 25) - big + (1 << 9) - 1)
    return result >> 10


def tanh_q15(x, input_left_shift: int):
    """int16 input at scale 2^(input_left_shift - 12) -> tanh in Q0.15 (TFLM table interpolation)."""
    x = np.asarray(x, dtype=np.int64)
    if input_left_shift >= 0:
        a = x * (3 << input_left_shift)
    else:
        right = -input_left_shift
        a = (x * 3 + (1 << (right - 1))) >> right
    u = np.abs(a)
    k = u >> 8
    r = u & 0xFF
    kk = np.minimum(k, 254)
    interpolated = (SIGMOID_TABLE_UINT16[kk] << 8) + r * (SIGMOID_TABLE_UINT16[kk + 1] - SIGMOID_TABLE_UINT16[kk])
    big = np.where(k >= 255, 0xFFFF << 8, interpolated)
    result = np.where(a >= 0, big - (1 << 23) + (1 << 7), -big + (1 << 23) + (1 << 7) - 1)
    return result >> 8
