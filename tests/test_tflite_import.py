"""TFLite importer: full-integer Keras -> TFLite models compiled with their own quantization give
TensorFlow Lite Micro's numbers exactly.

For every committed fixture in tests/fixtures/tflite/ (made by make_keras_fixtures.py), on at
least 1,024 int8 sequences (real data where the fixture has it, random, small, saturating and
constant otherwise): the tflite-micro interpreter run live == our simulator == our generated C,
integer for integer. The interpreter is reset() between sequences, as our C starts each sequence
from NAME_reset. Then: edited variants of the fixtures that must still match (a cell clip that
bites, a hidden-state scale that differs from the LSTM output's), and the variants the importer
must refuse, each with one clear line.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from click.testing import CliRunner
from flatbuffers.number_types import Uint32Flags

from conftest import REPO, SHARED, require_file, require_module
from lstm_edge.bundle import write_bundle
from lstm_edge.cli import main as cli_main
from lstm_edge.errors import ModelFormatError, QuantizationError, UnsupportedModelError
from lstm_edge.hostbuild import build_harness, run_harness
from lstm_edge.importers import load_model, load_prequantized
from lstm_edge.importers.tflite_importer import inspect_tflite, load_tflite_quantized
from lstm_edge.simulator import simulate
from lstm_edge.tflite import schema as S
from lstm_edge.tflite.reader import read_tflite

FIXTURES = REPO / "tests" / "fixtures" / "tflite"
MODELS = sorted(p.stem for p in FIXTURES.glob("*.tflite") if not p.stem.startswith(("bad_", "float_")))
SEQUENCES = 1024


def tflm_runtime():
    """tflite-micro's Python interpreter, the oracle."""
    return require_module("tflite_micro.python.tflite_micro.runtime")


def run_tflm(model_bytes: bytes, imp, x_q: np.ndarray, tensor: int = None, reset: bool = True) -> np.ndarray:
    """Each sequence through the interpreter from a fresh state; the values of `tensor` (default:
    the tensor the compiled model outputs, i.e. before a final softmax) per sequence."""
    runtime = tflm_runtime()
    interp = runtime.Interpreter.from_bytes(model_bytes,
                                            intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
    tensor = imp.output_tensor.index if tensor is None else tensor
    outputs = []
    for seq in x_q:
        interp.set_input(seq[:, None, :] if imp.chain.time_major else seq[None], 0)
        interp.invoke()
        outputs.append(np.array(interp.GetTensor(tensor, 0)["tensor_data"], dtype=np.int8).copy())
        if reset:
            interp.reset()
    return np.stack(outputs)


def inputs_for(name: str, imp, qmodel, rng) -> np.ndarray:
    """>= 1,024 int8 sequences [N, T, F] for a fixture."""
    steps, features = imp.steps, qmodel.input_size
    blocks = []
    with np.load(FIXTURES / f"{name}.io.npz") as z:
        blocks.append(z["x_q"])
    if name.startswith("vowels"):
        with np.load(require_file(SHARED / "data" / "japanese_vowels.npz")) as d:
            blocks.append(qmodel.input_q.quantize(np.concatenate([d["x_train"], d["x_test"]])))
        # A sequence on which a gate multiplier formed from the float32 product of the scales
        # (float(s_x * s_w), not double(s_x) * double(s_w)) gives one output the oracle does not.
        blocks.append(np.random.default_rng(0).integers(-128, 128, (1000, steps, features))[578:579])
    have = sum(len(b) for b in blocks)
    constant = np.stack([np.full((steps, features), v) for v in (-128, 127, 0, qmodel.input_q.zero_point)])
    rest = max(SEQUENCES - have - len(constant), 300)
    uniform = rng.integers(-128, 128, (rest // 3, steps, features))
    small = qmodel.input_q.quantize(rng.normal(0, 1, (rest // 3, steps, features)))
    extremes = np.where(rng.random((rest - 2 * (rest // 3), steps, features)) < 0.5, -128, 127)
    x = np.concatenate([b.astype(np.int64) for b in blocks] + [uniform, small, extremes, constant])
    return x.astype(np.int8)


@pytest.fixture(scope="module", params=MODELS)
def imported(request):
    name = request.param
    path = FIXTURES / f"{name}.tflite"
    imp = inspect_tflite(path)
    assert imp.quantized
    qmodel = load_tflite_quantized(path, name=name)
    x_q = inputs_for(name, imp, qmodel, np.random.default_rng(len(name)))
    y_sim = simulate(qmodel, x_q)
    y_tflm = run_tflm(path.read_bytes(), imp, x_q).reshape(y_sim.shape)
    return name, imp, qmodel, x_q, y_sim, y_tflm


def first_difference(imp, qmodel, x_q, model_bytes):
    """Where simulator and interpreter first differ, layer by layer (for the failure message)."""
    _, traces = simulate(qmodel, x_q, trace=True)
    for k, op in enumerate(imp.chain.lstm_ops):
        tflm = run_tflm(model_bytes, imp, x_q, tensor=op.outputs[0]).reshape(len(x_q), imp.steps, -1)
        ours = np.stack([s.hidden for s in traces[k]], axis=1)
        bad = np.argwhere(tflm != ours)
        if len(bad):
            n, t, j = bad[0]
            return f"LSTM layer {k}: sequence {n}, step {t}, unit {j}: tflm {tflm[n, t, j]}, simulator {ours[n, t, j]}"
    return "LSTM outputs agree; the head differs"


def test_fixture_set_is_complete():
    assert len(MODELS) >= 6, MODELS
    for name in MODELS:
        for suffix in (".tflite", ".h5", ".io.npz"):
            assert (FIXTURES / f"{name}{suffix}").is_file(), f"{name}{suffix}"
    hidden = {layer.hidden_size for name in MODELS
              for layer in load_tflite_quantized(FIXTURES / f"{name}.tflite", "m").recurrent_layers}
    assert min(hidden) <= 4 and max(hidden) >= 64


def test_simulator_equals_tflm(imported):
    name, imp, qmodel, x_q, y_sim, y_tflm = imported
    assert x_q.shape[0] >= 1000
    if not np.array_equal(y_sim, y_tflm):
        where = first_difference(imp, qmodel, x_q, (FIXTURES / f"{name}.tflite").read_bytes())
        count = int(np.sum(np.any((y_sim != y_tflm).reshape(len(x_q), -1), axis=1)))
        pytest.fail(f"{name}: simulator != tflite-micro on {count} of {len(x_q)} sequences; first: {where}")


def test_c_equals_simulator_and_tflm(imported, tmp_path):
    name, imp, qmodel, x_q, y_sim, y_tflm = imported
    out = write_bundle(qmodel, tmp_path / name)
    exe = build_harness(qmodel, out, tmp_path / "build", opt="-O2")
    y_c = run_harness(exe, qmodel, x_q, "run")
    assert y_c.dtype == np.int8
    assert np.array_equal(y_c, y_sim)
    assert np.array_equal(y_c, y_tflm)


def test_saturating_fixture_saturates_each_gate_term():
    """lstm1_saturating drives gate pre-activations past Q3.12's range, and the recurrent term alone
    past int16 (where TFLM clamps each term before the add: the order the equality above checks)."""
    from lstm_edge.fixedpoint import multiply_by_quantized_multiplier
    path = FIXTURES / "lstm1_saturating.tflite"
    imp, qmodel = inspect_tflite(path), load_tflite_quantized(path, "m")
    layer = qmodel.recurrent_layers[0]
    x_q = inputs_for("lstm1_saturating", imp, qmodel, np.random.default_rng(len("lstm1_saturating")))
    _, traces = simulate(qmodel, x_q, trace=True)
    pre = np.concatenate([s.preactivation.ravel() for s in traces[0]])
    assert np.mean(np.abs(pre) >= 32767) > 0.05
    h_prev = np.concatenate([s.hidden for s in traces[0][:-1]])
    beyond = 0
    for g in range(4):
        acc = h_prev.astype(np.int64) @ layer.recurrent_weights[g].T.astype(np.int64) + layer.recurrent_bias[g]
        r = layer.recurrent_requant[g]
        beyond += np.sum(np.abs(multiply_by_quantized_multiplier(acc, r.multiplier, r.shift)) > 32767)
    assert beyond > 100


def test_reset_between_sequences_is_needed():
    """Without reset() the interpreter carries the state over: the comparison relies on it."""
    path = FIXTURES / "lstm1_last_dense.tflite"
    imp = inspect_tflite(path)
    qmodel = load_tflite_quantized(path, "m")
    x_q = np.random.default_rng(3).integers(-128, 128, (20, imp.steps, qmodel.input_size)).astype(np.int8)
    carried = run_tflm(path.read_bytes(), imp, x_q, reset=False).reshape(20, -1)
    assert not np.array_equal(carried, simulate(qmodel, x_q))
    assert np.array_equal(run_tflm(path.read_bytes(), imp, x_q).reshape(20, -1), simulate(qmodel, x_q))


def test_vowels_int8_accuracy():
    """The imported real-data classifier keeps its accuracy (float Keras: 97.6 %)."""
    path = FIXTURES / "vowels_lstm32.tflite"
    qmodel = load_tflite_quantized(path, "vowels")
    assert qmodel.final_softmax == "softmax" and not qmodel.sequence_output
    with np.load(require_file(SHARED / "data" / "japanese_vowels.npz")) as d:
        x, y = d["x_test"], d["y_test"].astype(np.int64)
    pred = simulate(qmodel, qmodel.input_q.quantize(x)).astype(np.int64).argmax(-1)
    assert np.mean(pred == y) >= 0.95


def test_gate_multipliers_are_formed_in_double():
    """The oracle forms each gate's multiplier as double(s_x) * double(s_w) / 2^-12. With the
    float32 product float(s_x * s_w) instead, sequence 578 below gives another output."""
    import dataclasses
    from lstm_edge.quantized_model import Requant
    path = FIXTURES / "vowels_lstm32.tflite"
    imp, qmodel = inspect_tflite(path), load_tflite_quantized(path, "m")
    op, t = imp.chain.lstm_ops[0], imp.walk.t
    scale = lambda k: float(t(op.inputs[k]).quantization.scale[0])  # noqa: E731
    f32 = lambda a, b: Requant.from_real(float(np.float32(a) * np.float32(b)) * 4096.0)  # noqa: E731
    layer = qmodel.recurrent_layers[0]
    single = dataclasses.replace(
        layer, input_requant=tuple(f32(scale(0), scale(k)) for k in S.LSTM_INPUT_WEIGHTS),
        recurrent_requant=tuple(f32(scale(S.LSTM_OUTPUT_STATE), scale(k)) for k in S.LSTM_RECURRENT_WEIGHTS))
    assert single.input_requant != layer.input_requant
    x_q = np.random.default_rng(0).integers(-128, 128, (1000, imp.steps, qmodel.input_size))[578:579].astype(np.int8)
    oracle = run_tflm(path.read_bytes(), imp, x_q).reshape(1, -1)
    assert np.array_equal(simulate(qmodel, x_q), oracle)
    assert not np.array_equal(simulate(dataclasses.replace(qmodel, recurrent_layers=(single,)), x_q), oracle)


def test_imported_parameters_are_the_models_own():
    """Scales and zero points come from the file: input, hidden state, cell scale, head output."""
    path = FIXTURES / "lstm2_stacked.tflite"
    sg = read_tflite(path).subgraphs[0]
    qmodel = load_tflite_quantized(path, "m")
    lstm_ops = [op for op in sg.operators if op.opcode == S.BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM]
    for layer, op in zip(qmodel.recurrent_layers, lstm_ops):
        x, h, c = (sg.tensors[op.inputs[k]] for k in (0, S.LSTM_OUTPUT_STATE, S.LSTM_CELL_STATE))
        assert layer.input_q.scale == float(x.quantization.scale[0])
        assert layer.input_q.zero_point == int(x.quantization.zero_point[0])
        assert (layer.hidden_q.scale, layer.hidden_q.zero_point) == (float(h.quantization.scale[0]),
                                                                     int(h.quantization.zero_point[0]))
        assert 2.0 ** layer.cell_scale_power == float(c.quantization.scale[0])
        assert layer.cell_clip == min(int(10.0 / float(c.quantization.scale[0])), 32767)  # converter's clip 10
        assert np.array_equal(layer.input_weights[1], sg.tensors[op.inputs[2]].data)
    out = sg.tensors[sg.outputs[0]]
    assert qmodel.output_q.scale == float(out.quantization.scale[0])
    assert qmodel.output_q.zero_point == int(out.quantization.zero_point[0])


# ------------------------------------------------------------------------------- edited fixtures

def _tables(buf):
    root = S.root_table(buf)
    sg = S.read_tables(root, S.Model.SUBGRAPHS)[0]
    return root, sg


def _op(buf, index):
    return S.read_tables(_tables(buf)[1], S.SubGraph.OPERATORS)[index]


def _tensor(buf, index):
    return S.read_tables(_tables(buf)[1], S.SubGraph.TENSORS)[index]


def _field(table, slot) -> int:
    o = table.Offset(S.vtable_offset(slot))
    assert o, f"field {slot} is not stored"
    return table.Pos + o


def _element(table, slot, k: int, width: int) -> int:
    o = table.Offset(S.vtable_offset(slot))
    assert o and k < table.VectorLen(o)
    return table.Vector(o) + width * k


def patched(name: str, edits) -> bytes:
    """The fixture's bytes with in-place edits: (kind, target..., value)."""
    buf = bytearray((FIXTURES / f"{name}.tflite").read_bytes())
    for edit in edits:
        kind = edit[0]
        if kind == "op_input":            # operator input k -> tensor index (or -1)
            _, op, k, value = edit
            struct.pack_into("<i", buf, _element(_op(buf, op), S.Operator.INPUTS, k, 4), value)
        elif kind == "lstm_option":       # a stored option of the op (cell_clip float, activation int8)
            _, op, slot, fmt, value = edit
            options = S.read_table(_op(buf, op), S.Operator.BUILTIN_OPTIONS)
            struct.pack_into(fmt, buf, _field(options, slot), value)
        elif kind == "tensor_type":
            _, tensor, value = edit
            struct.pack_into("<b", buf, _field(_tensor(buf, tensor), S.Tensor.TYPE), value)
        elif kind == "scale":
            _, tensor, value = edit
            q = S.read_table(_tensor(buf, tensor), S.Tensor.QUANTIZATION)
            struct.pack_into("<f", buf, _element(q, S.QuantizationParameters.SCALE, 0, 4), value)
        elif kind == "zero_point":
            _, tensor, value = edit
            q = S.read_table(_tensor(buf, tensor), S.Tensor.QUANTIZATION)
            struct.pack_into("<q", buf, _element(q, S.QuantizationParameters.ZERO_POINT, 0, 8), value)
        elif kind == "tensor_data":       # element 0 of a constant tensor's buffer
            _, tensor, fmt, value = edit
            index = S.read_scalar(_tensor(buf, tensor), S.Tensor.BUFFER, Uint32Flags, 0)
            buffer = S.read_tables(S.root_table(buf), S.Model.BUFFERS)[index]
            struct.pack_into(fmt, buf, _element(buffer, S.Buffer.DATA, 0, 1), value)
        elif kind == "opcode":            # the builtin code of operator op's OperatorCode
            _, op, value = edit
            index = S.read_scalar(_op(buf, op), S.Operator.OPCODE_INDEX, Uint32Flags, 0)
            code = S.read_tables(S.root_table(buf), S.Model.OPERATOR_CODES)[index]
            struct.pack_into("<i", buf, _field(code, S.OperatorCode.BUILTIN_CODE), value)
        else:
            raise ValueError(kind)
    return bytes(buf)


def _import_bytes(tmp_path, data: bytes, name="edited"):
    path = tmp_path / f"{name}.tflite"
    path.write_bytes(data)
    return path, inspect_tflite(path), load_tflite_quantized(path, name)


def _lstm_state_tensors(name):
    sg = read_tflite(FIXTURES / f"{name}.tflite").subgraphs[0]
    op = sg.operators[0]
    return sg, op, op.inputs[S.LSTM_OUTPUT_STATE], op.inputs[S.LSTM_CELL_STATE]


def test_a_cell_clip_that_bites_equals_tflm(tmp_path):
    """cell_clip 0.25 (quantized to 512 at 2^-11): the clip is applied as TFLM applies it."""
    data = patched("lstm1_last_dense", [("lstm_option", 0, 1, "<f", 0.25)])
    path, imp, qmodel = _import_bytes(tmp_path, data)
    assert qmodel.recurrent_layers[0].cell_clip == int(0.25 / 2.0 ** qmodel.recurrent_layers[0].cell_scale_power)
    x_q = inputs_for("lstm1_last_dense", imp, qmodel, np.random.default_rng(5))[-600:]
    _, traces = simulate(qmodel, x_q, trace=True)
    cells = np.concatenate([np.abs(s.cell).ravel() for s in traces[0]])
    assert np.mean(cells == qmodel.recurrent_layers[0].cell_clip) > 0.01
    y_sim = simulate(qmodel, x_q)
    assert np.array_equal(run_tflm(data, imp, x_q).reshape(y_sim.shape), y_sim)


def test_hidden_state_parameters_are_those_tflm_uses(tmp_path):
    """The hidden state's own scale and zero point (LSTM input 18) drive the recurrence, the reset
    and the output requantization, even when the LSTM output tensor declares others (the next layer
    reads the values with the output tensor's parameters)."""
    sg, op, h_index, _ = _lstm_state_tensors("lstm2_stacked")
    h = sg.tensors[h_index]
    scale = float(h.quantization.scale[0]) * 1.37
    data = patched("lstm2_stacked", [("scale", h_index, scale), ("zero_point", h_index, 17)])
    path, imp, qmodel = _import_bytes(tmp_path, data)
    edited = read_tflite(path).subgraphs[0]
    out = edited.tensors[op.outputs[0]]
    assert float(out.quantization.scale[0]) != float(np.float32(scale))  # only the state tensor changed
    assert qmodel.recurrent_layers[0].hidden_q.zero_point == 17
    assert qmodel.recurrent_layers[1].input_q.zero_point == int(out.quantization.zero_point[0])
    x_q = inputs_for("lstm2_stacked", imp, qmodel, np.random.default_rng(6))[-500:]
    y_sim = simulate(qmodel, x_q)
    assert np.array_equal(run_tflm(data, imp, x_q).reshape(y_sim.shape), y_sim)


@pytest.mark.parametrize("edit,message", [
    ("peephole", "peephole"),
    ("cifg", "CIFG"),
    ("projection", "projection"),
    ("layer_norm", "layer-normalized"),
    ("int16_activations", "16x8"),
    ("cell_activation_relu", "cell activation is RELU"),
    ("fused_relu6", "RELU6"),
    ("while_loop", "WHILE loop"),
    ("cell_scale_not_pow2", "not a power of two"),
])
def test_refused_variants(edit, message, tmp_path):
    sg, op, h_index, c_index = _lstm_state_tensors("lstm2_stacked")
    bias = op.inputs[S.LSTM_GATE_BIASES[0]]
    weights = op.inputs[S.LSTM_RECURRENT_WEIGHTS[0]]
    fc = next(o.index for o in sg.operators if o.opcode == S.BuiltinOperator.FULLY_CONNECTED)
    edits = {
        "peephole": [("op_input", 0, 9, bias)],
        "cifg": [("op_input", 0, 1, -1), ("op_input", 0, 5, -1), ("op_input", 0, 12, -1)],
        "projection": [("op_input", 0, S.LSTM_PROJECTION_WEIGHTS, weights)],
        "layer_norm": [("op_input", 0, 20, bias)],
        "int16_activations": [("tensor_type", op.inputs[0], S.TensorType.INT16)],
        "cell_activation_relu": [("lstm_option", 0, 0, "<b", S.ActivationFunctionType.RELU)],
        "fused_relu6": [("lstm_option", fc, 0, "<b", S.ActivationFunctionType.RELU6)],
        "while_loop": [("opcode", fc, S.BuiltinOperator.WHILE)],
        "cell_scale_not_pow2": [("scale", c_index, 1.5 * 2.0 ** -11)],
    }[edit]
    path = tmp_path / f"{edit}.tflite"
    path.write_bytes(patched("lstm2_stacked", edits))
    with pytest.raises(UnsupportedModelError, match=message) as info:
        load_tflite_quantized(path, "m")
    assert "\n" not in str(info.value) and path.name in str(info.value)


@pytest.mark.parametrize("name,message", [
    ("bad_hybrid", "hybrid"),
    ("bad_bidirectional", "bidirectional"),
    ("bad_dense_tanh", "TANH"),
])
def test_refused_converter_outputs(name, message):
    with pytest.raises(UnsupportedModelError, match=message):
        load_model(FIXTURES / f"{name}.tflite")
    with pytest.raises(UnsupportedModelError, match=message):
        load_prequantized(FIXTURES / f"{name}.tflite", "m")


def test_damaged_files(tmp_path):
    good = (FIXTURES / "lstm1_seq.tflite").read_bytes()
    for label, data in (("truncated", good[: len(good) // 3]), ("not_tflite", b"\x00" * 64),
                        ("garbage", good[:8] + bytes(range(256)) * 4)):
        path = tmp_path / f"{label}.tflite"
        path.write_bytes(data)
        with pytest.raises(ModelFormatError):
            load_model(path)


def test_float_tflite_goes_through_calibration():
    """A float .tflite is read into the float IR (like ONNX) and needs calibration data."""
    path = FIXTURES / "float_lstm1_last_dense.tflite"
    assert load_prequantized(path, "m") is None
    model = load_model(path)
    assert [l.hidden_size for l in model.recurrent_layers] == [16] and not model.sequence_output
    assert any("cell clip" in note for note in model.notes)
    runtime = tflm_runtime()
    interp = runtime.Interpreter.from_bytes(path.read_bytes())
    from lstm_edge.reference import forward
    x = np.random.default_rng(2).normal(size=(8, 12, 6)).astype(np.float32)
    expected = []
    for seq in x:
        interp.set_input(seq[None], 0)
        interp.invoke()
        expected.append(interp.get_output(0)[0])
        interp.reset()
    assert np.max(np.abs(forward(model, x) - np.stack(expected))) < 1e-4


def test_cli_compiles_a_full_integer_model_without_calib(tmp_path):
    runner = CliRunner()
    model = FIXTURES / "lstm1_seq_dense.tflite"
    result = runner.invoke(cli_main, ["compile", str(model), "-o", str(tmp_path / "out"), "--name", "kws"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "kws.c").is_file() and (tmp_path / "out" / "kws.qmodel.json").is_file()
    assert "no calibration" in result.output
    refused = runner.invoke(cli_main, ["compile", str(model), "--calib", str(model), "-o", str(tmp_path / "o2")])
    assert refused.exit_code == 2 and "drop --calib" in refused.output
    float_model = FIXTURES / "float_lstm1_last_dense.tflite"
    missing = runner.invoke(cli_main, ["compile", str(float_model), "-o", str(tmp_path / "o3")])
    assert missing.exit_code == 2 and "--calib is required" in missing.output
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_importer_refuses_what_it_cannot_keep_exact(tmp_path):
    """A gate bias so large that the folded accumulator could wrap int32 in the C is refused."""
    sg, op, _, _ = _lstm_state_tensors("lstm1_last_dense")
    path = tmp_path / "huge_bias.tflite"
    path.write_bytes(patched("lstm1_last_dense", [("tensor_data", op.inputs[S.LSTM_GATE_BIASES[1]], "<i", 2**31 - 1)]))
    with pytest.raises(QuantizationError, match="accumulator"):
        load_tflite_quantized(path, "m")
