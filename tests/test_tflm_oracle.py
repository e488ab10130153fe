"""TensorFlow Lite Micro is the oracle: our compiled model, exported to .tflite and run by the
`tflite-micro` interpreter's reference kernels, equals our simulator and our generated C,
integer for integer.

- int8 TANH / LOGISTIC heads: the quantizer's 256-entry tables == TFLM's kernels on all 256
  inputs, for many input quantizations (a float64 table would not be).
- 37 random models (17 built as float IR, 20 as ONNX graphs through the importer): shapes 1-64,
  1-3 layers, with and without heads, calibration data from narrow to very wide ranges that
  saturate the gates. Each: compile -> .tflite -> TFLM on 1,000 sequences (reset between
  sequences) == simulator == C.
- State, cell clip, the file's contents, refusals and the CLI's --emit-tflite.
"""

import dataclasses
import zlib

import numpy as np
import onnx
import pytest
from flatbuffers import number_types as N

from conftest import require_tool, require_module
from lstm_edge.bundle import load_bundle_quantized, write_bundle
from lstm_edge.calibration import calibrate
from lstm_edge.errors import InputDataError, QuantizationError, UnsupportedModelError
from lstm_edge.hostbuild import build_harness, run_harness
from lstm_edge.importers.onnx_importer import load_onnx
from lstm_edge.ir import Activation
from lstm_edge.quantized_model import QuantParams
from lstm_edge.quantizer import TABLE_OUTPUT_Q, activation_table, quantize
from lstm_edge.simulator import simulate
from lstm_edge.tflite import export_tflite, schema
from lstm_edge.tflite.schema import BuiltinOperator, TensorType
from lstm_edge.tflite.writer import GraphWriter
from model_factory import random_model, signal_like
from onnx_cases import Spec, build_case

ARENA_BYTES = 1 << 21
SEQUENCES = 1000


def tflm_runtime():
    """tflite-micro's Python interpreter, the oracle."""
    return require_module("tflite_micro.python.tflite_micro.runtime")


def run_tflm(model_bytes: bytes, x_q: np.ndarray) -> np.ndarray:
    """Each sequence [T, I] from a reset state (batch 1): [N, T, O] or [N, O], like simulate."""
    interpreter = tflm_runtime().Interpreter.from_bytes(model_bytes, arena_size=ARENA_BYTES)
    outputs = []
    for sequence in x_q:
        interpreter.set_input(sequence[None], 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0)[0]))
        interpreter.reset()  # TFLM keeps h and c in variable tensors: a new sequence starts from reset
    return np.stack(outputs)


# ------------------------------------------------------------------------ int8 tanh / sigmoid

def single_op_model(op: BuiltinOperator, input_q: QuantParams, output_q: QuantParams) -> bytes:
    g = GraphWriter()
    x = g.tensor("x", (256,), TensorType.INT8, q=input_q)
    y = g.tensor("y", (256,), TensorType.INT8, q=output_q)
    g.operator(op, [x], [y])
    return g.finish([x], [y])


def float_table(activation: Activation, input_q: QuantParams) -> np.ndarray:
    """What a float64 table gives: f(dequantized input), rounded to the fixed output quantization."""
    real = (np.arange(-128, 128) - input_q.zero_point) * input_q.scale
    value = np.tanh(real) if activation == Activation.TANH else 0.5 * (1 + np.tanh(0.5 * real))
    out_q = TABLE_OUTPUT_Q[activation]
    return np.clip(np.floor(value / out_q.scale + 0.5) + out_q.zero_point, -128, 127)


def table_input_quantizations():
    """Scales from 1e-4 (every input maps near 0) to 20 (saturated beyond the input radius), random
    zero points, and the extremes of both."""
    rng = np.random.default_rng(31)
    qs = [QuantParams(float(np.float32(10 ** rng.uniform(-4, 1.3))), int(rng.integers(-128, 128)))
          for _ in range(60)]
    qs += [QuantParams(float(np.float32(s)), zp) for s in (1 / 16, 5 / 255, 0.1, 1.0, 16.0) for zp in (-128, 0, 127)]
    return qs


def test_int8_tanh_and_sigmoid_tables_equal_tflm_on_all_inputs():
    tflm_runtime()
    all_inputs = np.arange(-128, 128, dtype=np.int8)
    float_differs = 0
    for input_q in table_input_quantizations():
        for activation, op in ((Activation.TANH, BuiltinOperator.TANH), (Activation.SIGMOID, BuiltinOperator.LOGISTIC)):
            table_q = TABLE_OUTPUT_Q[activation]
            ours = activation_table(activation, input_q, table_q)
            interpreter = tflm_runtime().Interpreter.from_bytes(single_op_model(op, input_q, table_q),
                                                                arena_size=1 << 16)
            interpreter.set_input(all_inputs, 0)
            interpreter.invoke()
            theirs = interpreter.get_output(0)
            assert ours.dtype == theirs.dtype == np.int8
            assert np.array_equal(ours, theirs), (activation, input_q, np.nonzero(ours != theirs))
            float_differs += int(np.sum(float_table(activation, input_q) != theirs))
    # Why the tables follow TFLM's integer algorithm: a float64 table differs from it in some entries.
    assert float_differs > 0


# ------------------------------------------------------------------------ random models

# (input size, hidden sizes, head [(units, activation)], sequence output, weight std, calibration scale, steps)
def ir_cases():
    rng = np.random.default_rng(2024)
    activations = ["none", "relu", "tanh", "sigmoid"]
    cases = {}
    for k in range(12):
        inputs = int(rng.integers(1, 65))
        hidden = [int(rng.integers(1, 65)) for _ in range(int(rng.integers(1, 4)))]
        head = [(int(rng.integers(1, 17)), activations[int(rng.integers(4))]) for _ in range(int(rng.integers(0, 3)))]
        seq = bool(rng.integers(2))
        std, calib_scale = float(10 ** rng.uniform(-0.5, 0.8)), float(10 ** rng.uniform(-1, 1.3))
        cases[f"r{k}_i{inputs}_h{'x'.join(map(str, hidden))}_{'seq' if seq else 'last'}"] = (
            inputs, hidden, head, seq, std, calib_scale, int(rng.integers(2, 13)))
    # extremes: the smallest and the largest shapes, and two built to saturate the gates
    cases["i1_h1_seq"] = (1, [1], [], True, 0.5, 1.0, 6)
    cases["i1_h3_last_regression"] = (1, [3], [(1, "none")], False, 0.5, 1.0, 1)  # one output: per-tensor FC
    cases["i64_h64x3_last_sigmoid"] = (64, [64, 64, 64], [(64, "sigmoid")], False, 0.5, 1.0, 8)
    cases["i12_h24x2_saturating_tanh"] = (12, [24, 24], [(9, "tanh")], False, 6.0, 20.0, 10)
    cases["i5_h40_seq_saturating_relu"] = (5, [40], [(16, "relu"), (3, "none")], True, 8.0, 5.0, 12)
    return cases


IR_CASES = ir_cases()

ONNX_CASES = {  # through the ONNX importer, as a user's file would come
    "onnx_h8_sequence": Spec(features=3, hidden=(8,), select="sequence", seed=1),
    "onnx_h16x2_gather_gemm_relu": Spec(features=10, hidden=(16, 16), select="gather", batch_first=True,
                                        head=(("gemm", 12, "Relu"), ("gemm", 4, None)), seed=2),
    "onnx_h33_yh_tanh": Spec(features=7, hidden=(33,), select="y_h_gather", head=(("gemm", 5, "Tanh"),), seed=3),
    "onnx_h4x3_sequence_matmul_sigmoid": Spec(features=2, hidden=(4, 6, 5), select="sequence", batch_first=True,
                                              head=(("matmul", 3, "Sigmoid"),), seed=4),
    "onnx_h64_slice_gemm": Spec(features=64, hidden=(64,), select="slice", head=(("gemm", 10, None),), seed=5),
    "onnx_h20_dynamo_gather": Spec(features=6, hidden=(20, 12), link="dynamo", opset=18, select="gather",
                                   head=(("gemm", 2, "Sigmoid"),), seed=6),
}


def random_onnx_cases(count: int = 14):
    """More ONNX graphs with random shapes (1-64), depths (1-3), heads and last-step selections."""
    rng = np.random.default_rng(77)
    heads = [(), (("gemm", 5, None),), (("matmul", 7, "Relu"), ("gemm", 3, None)), (("gemm", 4, "Tanh"),),
             (("gemm", 6, "Sigmoid"),)]
    cases = {}
    for k in range(count):
        hidden = tuple(int(rng.integers(1, 65)) for _ in range(int(rng.integers(1, 4))))
        select = ["sequence", "gather", "slice", "y_h_gather"][int(rng.integers(4))]
        head = heads[int(rng.integers(len(heads)))]
        if select == "sequence":  # Gemm is 2-D: a per-step head is a MatMul (+ Add)
            head = tuple(("matmul",) + layer[1:] for layer in head)
        spec = Spec(features=int(rng.integers(1, 65)), hidden=hidden, select=select, batch_first=bool(rng.integers(2)),
                    head=head, seed=100 + k)
        cases[f"onnx_r{k}_i{spec.features}_h{'x'.join(map(str, hidden))}_{select}"] = spec
    return cases


ONNX_CASES.update(random_onnx_cases())


def oracle_inputs(qmodel, rng, steps: int, calib_scale: float) -> np.ndarray:
    """1,000 int8 sequences: uniform, calibration-like, the int8 extremes, and constants."""
    size = qmodel.input_size
    uniform = rng.integers(-128, 128, (400, steps, size))
    like_calib = qmodel.input_q.quantize(signal_like(rng, 300, steps, size, scale=calib_scale)).astype(np.int64)
    extremes = np.where(rng.random((250, steps, size)) < 0.5, -128, 127)
    constants = np.stack([np.full((steps, size), v) for v in (-128, 127, 0, qmodel.input_q.zero_point, 1)] * 10)
    return np.concatenate([uniform, like_calib, extremes, constants]).astype(np.int8)


def compile_case(key, tmp_path):
    """(float model, quantized model, steps, calibration scale) of a test case."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key in IR_CASES:
        inputs, hidden, head, seq, std, calib_scale, steps = IR_CASES[key]
        model = random_model(inputs, hidden, head, sequence_output=seq, seed=zlib.crc32(key.encode()) % 1000,
                             weight_std=std)
    else:
        path = tmp_path / f"{key}.onnx"
        onnx.save(build_case(ONNX_CASES[key]).model, str(path))
        model = load_onnx(path)
        calib_scale, steps = float(10 ** rng.uniform(-0.5, 1.3)), int(rng.integers(3, 11))  # up to 20: saturating
    calib = signal_like(rng, 48, steps, model.input_size, scale=calib_scale)
    return model, quantize(model, calibrate(model, calib), name="m"), steps, calib_scale


@pytest.mark.parametrize("key", sorted(IR_CASES) + sorted(ONNX_CASES))
def test_tflm_equals_simulator_equals_c(key, tmp_path):
    tflm_runtime()
    model, qmodel, steps, calib_scale = compile_case(key, tmp_path)
    x_q = oracle_inputs(qmodel, np.random.default_rng(zlib.crc32(key.encode()) + 1), steps, calib_scale)
    assert x_q.shape[0] >= SEQUENCES
    expected, traces = simulate(qmodel, x_q, trace=True)

    got_tflm = run_tflm(export_tflite(qmodel, steps), x_q)
    assert got_tflm.dtype == expected.dtype == np.int8 and got_tflm.shape == expected.shape
    mismatch = np.argwhere(got_tflm != expected)
    assert mismatch.size == 0, f"{len(mismatch)} values differ from TFLM, first at {mismatch[0].tolist()}"

    out = write_bundle(qmodel, tmp_path / "out", model)
    exe = build_harness(qmodel, out, tmp_path / "build", cc=require_tool("gcc"))
    assert np.array_equal(run_harness(exe, qmodel, x_q, "run"), expected)

    if "saturating" in key:  # the gate clamps really are exercised
        pre = np.concatenate([step.preactivation.ravel() for step in traces[0]])
        assert np.mean(np.abs(pre) >= 32767) > 0.01


def test_cases_cover_the_brief():
    """The random cases span what they claim: sizes 1..64, 1..3 layers, every head kind, both outputs."""
    shapes = [c[:4] for c in IR_CASES.values()]
    sizes = [c[0] for c in shapes] + [h for c in shapes for h in c[1]]
    assert min(sizes) == 1 and max(sizes) == 64
    assert {len(c[1]) for c in shapes} == {1, 2, 3}
    assert {act for c in shapes for _, act in c[2]} == {"none", "relu", "tanh", "sigmoid"}
    assert {c[3] for c in shapes} == {True, False} and any(not c[2] for c in shapes)
    assert len(IR_CASES) + len(ONNX_CASES) >= 20 and len(ONNX_CASES) >= 20


# ------------------------------------------------------------------------ state and cell clip

def small_model(**kwargs):
    rng = np.random.default_rng(5)
    args = dict(sequence_output=True, seed=5, weight_std=2.0) | kwargs
    model = random_model(4, [10, 6], [(3, "none")], **args)
    return model, quantize(model, calibrate(model, signal_like(rng, 48, 8, 4, scale=2.0)), name="m")


def test_state_carries_over_without_reset():
    """Two invokes without reset() continue the sequence, as the C's run() continues from its state."""
    _, qmodel = small_model()
    rng = np.random.default_rng(6)
    x_q = rng.integers(-128, 128, (1, 16, 4)).astype(np.int8)
    interpreter = tflm_runtime().Interpreter.from_bytes(export_tflite(qmodel, 8), arena_size=ARENA_BYTES)
    halves = []
    for half in (x_q[:, :8], x_q[:, 8:]):
        interpreter.set_input(half, 0)
        interpreter.invoke()
        halves.append(np.array(interpreter.get_output(0)))
    whole = simulate(qmodel, x_q)
    assert np.array_equal(np.concatenate(halves, axis=1), whole)
    assert not np.array_equal(halves[1], simulate(qmodel, x_q[:, 8:]))  # the state did matter


def test_cell_clip_equals_tflm(tmp_path):
    """A quantized cell clip (our models have none, imported ones may) reaches TFLM as the same clip."""
    model, qmodel = small_model()
    x_q = np.random.default_rng(7).integers(-128, 128, (300, 8, 4)).astype(np.int8)
    _, traces = simulate(qmodel, x_q, trace=True)
    clip = int(np.percentile(np.abs(np.concatenate([t.cell.ravel() for t in traces[0]])), 70))
    clipped = dataclasses.replace(qmodel, recurrent_layers=(dataclasses.replace(qmodel.recurrent_layers[0], cell_clip=clip),
                                                       qmodel.recurrent_layers[1]))
    expected = simulate(clipped, x_q)
    assert not np.array_equal(expected, simulate(qmodel, x_q))  # the clip is active
    assert np.array_equal(run_tflm(export_tflite(clipped, 8), x_q), expected)
    out = write_bundle(clipped, tmp_path / "out", model)
    exe = build_harness(clipped, out, tmp_path / "build", cc=require_tool("gcc"))
    assert np.array_equal(run_harness(exe, clipped, x_q, "run"), expected)


def test_tflm_writes_h_with_the_hidden_state_tensors_quantization(monkeypatch):
    """A fact for importers: TFLM requantizes h with input 18's (the hidden state's) scale and zero
    point; the quantization of intermediate #4 does not change its result."""
    _, qmodel = small_model()
    x_q = np.random.default_rng(8).integers(-128, 128, (20, 8, 4)).astype(np.int8)
    baseline = run_tflm(export_tflite(qmodel, 8), x_q)
    original = GraphWriter.tensor

    def changed(suffix):
        def tensor(self, name, *args, **kwargs):
            if name.endswith(suffix):
                kwargs["q"] = QuantParams(kwargs["q"].scale * 3, kwargs["q"].zero_point // 2)
            return original(self, name, *args, **kwargs)
        return tensor

    for suffix, matters in (("lstm1/effective_hidden", False), ("lstm1/hidden_state", True)):
        monkeypatch.setattr(GraphWriter, "tensor", changed(suffix))
        assert (not np.array_equal(run_tflm(export_tflite(qmodel, 8), x_q), baseline)) == matters, suffix
    monkeypatch.setattr(GraphWriter, "tensor", original)


# ------------------------------------------------------------------------ the file itself

def tensors_by_name(model_bytes: bytes):
    """{name: (shape, type, data array or None, scales, zero points, is_variable)} read with schema's helpers."""
    root = schema.root_table(model_bytes)
    buffers = schema.read_tables(root, schema.Model.BUFFERS)
    subgraph = schema.read_tables(root, schema.Model.SUBGRAPHS)[0]
    result = {}
    for t in schema.read_tables(subgraph, schema.SubGraph.TENSORS):
        ttype = TensorType(schema.read_scalar(t, schema.Tensor.TYPE, N.Int8Flags, 0))
        buffer = schema.read_scalar(t, schema.Tensor.BUFFER, N.Uint32Flags, 0)
        raw = schema.read_vector(buffers[buffer], schema.Buffer.DATA, np.uint8)
        shape = tuple(schema.read_vector(t, schema.Tensor.SHAPE, "<i4"))
        data = raw.view(schema.NUMPY_DTYPES[ttype]).reshape(shape) if raw.size else None
        quant = schema.read_table(t, schema.Tensor.QUANTIZATION)
        scales = schema.read_vector(quant, schema.QuantizationParameters.SCALE, "<f4") if quant else None
        zps = schema.read_vector(quant, schema.QuantizationParameters.ZERO_POINT, "<i8") if quant else None
        variable = schema.read_scalar(t, schema.Tensor.IS_VARIABLE, N.BoolFlags,
                                      False)
        result[schema.read_string(t, schema.Tensor.NAME)] = (shape, ttype, data, scales, zps, variable)
    return root, subgraph, result


def test_file_holds_plain_biases_and_our_weights():
    """TFLM subtracts zero points itself: the file's biases are ours with the folding undone."""
    _, qmodel = small_model(sequence_output=False)
    data = export_tflite(qmodel, 8)
    assert schema.has_identifier(data)
    root, subgraph, tensors = tensors_by_name(data)
    for k, layer in enumerate(qmodel.recurrent_layers):
        for gate, name in enumerate("ifgo"):
            w = layer.input_weights[gate].astype(np.int64)
            bias = tensors[f"lstm{k}/{name}_bias"][2]
            assert np.array_equal(bias - layer.input_q.zero_point * w.sum(axis=1), layer.input_bias[gate])
            assert np.array_equal(tensors[f"lstm{k}/input_to_{name}"][2], layer.input_weights[gate])
            assert np.array_equal(tensors[f"lstm{k}/recurrent_to_{name}"][2], layer.recurrent_weights[gate])
        h_shape, h_type, _, h_scale, h_zp, h_var = tensors[f"lstm{k}/hidden_state"]
        assert (h_shape, h_type, h_var) == ((1, layer.hidden_size), TensorType.INT8, True)
        assert (float(h_scale[0]), int(h_zp[0])) == (layer.hidden_q.scale, layer.hidden_q.zero_point)
        c_shape, c_type, _, c_scale, _, c_var = tensors[f"lstm{k}/cell_state"]
        assert (c_type, c_var, float(c_scale[0])) == (TensorType.INT16, True, 2.0 ** layer.cell_scale_power)
    dense = qmodel.head[0]
    bias = tensors["dense0/bias"][2]
    assert np.array_equal(bias - dense.input_q.zero_point * dense.weights.astype(np.int64).sum(axis=1), dense.bias)
    assert len(tensors["dense0/weights"][3]) == dense.output_size  # per-channel scales
    assert tensors["input"][0] == (1, 8, 4) and tensors["dense0/output"][0] == (1, 3)
    opcodes = schema.read_tables(root, schema.Model.OPERATOR_CODES)
    codes = [schema.read_scalar(c, schema.OperatorCode.BUILTIN_CODE, N.Int32Flags, 0)
             for c in opcodes]
    assert sorted(codes) == sorted([BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM, BuiltinOperator.STRIDED_SLICE,
                                    BuiltinOperator.FULLY_CONNECTED])
    assert len(schema.read_tables(subgraph, schema.SubGraph.OPERATORS)) == 4  # 2 LSTMs, slice, dense


def test_export_refuses_what_tflm_cannot_run():
    _, qmodel = small_model()
    with pytest.raises(InputDataError, match="steps"):
        export_tflite(qmodel, 0)
    layer = qmodel.recurrent_layers[0]
    odd_bias = dataclasses.replace(layer, recurrent_bias=layer.recurrent_bias + 1)
    with pytest.raises(QuantizationError, match="recurrent bias"):
        export_tflite(dataclasses.replace(qmodel, recurrent_layers=(odd_bias,) + qmodel.recurrent_layers[1:]), 8)
    gru = random_model(3, [5], [], kinds=["gru"])
    gru_q = quantize(gru, calibrate(gru, signal_like(np.random.default_rng(0), 16, 5, 3)), name="g")
    with pytest.raises(UnsupportedModelError, match="LSTM"):
        export_tflite(gru_q, 5)


def test_export_refuses_a_table_that_is_not_tflms():
    """A model compiled before the tables followed TFLM (float tables) must not export silently."""
    model = random_model(3, [6], [(4, "tanh")], sequence_output=False, seed=11)
    qmodel = quantize(model, calibrate(model, signal_like(np.random.default_rng(1), 32, 6, 3, scale=3.0)), name="t")
    dense = qmodel.head[0]
    table = dense.table.copy()
    table[200] = table[200] - 1
    with pytest.raises(QuantizationError, match="TFLite Micro"):
        export_tflite(dataclasses.replace(qmodel, head=(dataclasses.replace(dense, table=table),)), 6)


# ------------------------------------------------------------------------ CLI

def test_cli_emit_tflite(tmp_path):
    from test_cli import assert_clean_error, cli
    model_path = tmp_path / "model.onnx"
    onnx.save(build_case(Spec(features=5, hidden=(7,), select="gather", batch_first=True,
                              head=(("gemm", 3, "Tanh"),))).model, str(model_path))
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(2).normal(0, 1, (40, 11, 5)).astype(np.float32))
    out = tmp_path / "out"
    result = cli("compile", model_path, "--calib", calib, "-o", out, "--name", "kws", "--emit-tflite")
    assert result.returncode == 0, result.stderr
    assert "kws.tflite (11 steps)" in result.stdout
    qmodel = load_bundle_quantized(out)
    data = (out / "kws.tflite").read_bytes()
    assert data == export_tflite(qmodel, 11)
    x_q = np.random.default_rng(3).integers(-128, 128, (50, 11, 5)).astype(np.int8)
    assert np.array_equal(run_tflm(data, x_q), simulate(qmodel, x_q))

    result = cli("compile", model_path, "--calib", calib, "-o", tmp_path / "o2", "--emit-tflite", "--tflite-steps", 4)
    assert result.returncode == 0, result.stderr
    assert tensors_by_name((tmp_path / "o2" / "o2.tflite").read_bytes())[2]["input"][0] == (1, 4, 5)

    result = cli("compile", model_path, "--calib", calib, "-o", tmp_path / "o3", "--tflite-steps", 4)
    assert_clean_error(result, "--emit-tflite")
    assert not (tmp_path / "o3").exists()
