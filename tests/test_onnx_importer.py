"""The ONNX importer on graphs built with onnx.helper (tests/onnx_cases.py); no torch needed.

Each supported case checks that lstm_edge.reference.forward on the imported model equals the
graph run by onnxruntime (or, for LSTM/GRU layout=1, which onnxruntime refuses, by
onnx.reference.ReferenceEvaluator, which implements layout, direction and linear_before_reset
but ignores sequence_lens, clip and activations) within 1e-5. Each refusal checks the error class and that
the message is one line naming the node and its op type.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lstm_edge.errors import LstmEdgeError, ModelFormatError, UnsupportedModelError
from lstm_edge.importers import load_model
from lstm_edge.importers.onnx_importer import graph_input_layout, inspect_onnx, load_onnx
from lstm_edge.ir import Activation, BidirectionalLayer, GruLayer, LstmLayer
from lstm_edge.reference import forward
from onnx_cases import (Spec, append_node, bidirectional_case, build_case, dense_before_lstm_case, find_node,
                        h_n_case, lens_on_data_path, model_input, rank2_input_case, recurrent_case, set_attribute,
                        set_input, state_input_case, to_reference_layout, with_lens_input)

ATOL = 1e-5
AXIS_LETTERS = {"batch": "n", "time": "t", "feature": "f", "unit": "1", "direction": "d"}


def save(model: onnx.ModelProto, folder: Path, name: str = "case") -> Path:
    path = folder / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return path


def run_graph(case, path: Path, x: np.ndarray) -> np.ndarray:
    if case.runner == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(onnx.load(str(path))).run(None, {"x": x})[0]


def check_against_graph(case, path: Path, seed: int = 0):
    """Import `path`, then compare reference.forward with the graph itself."""
    imported = inspect_onnx(path)
    assert imported.input_layout == case.input_layout
    assert "".join(AXIS_LETTERS[a] for a in imported.output_axes) == case.output_axes
    x = np.random.default_rng(seed).standard_normal((case.batch, case.steps, case.features)).astype(np.float32)
    expected = to_reference_layout(run_graph(case, path, model_input(case, x)), case.output_axes)
    got = forward(imported.model, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    return imported.model


INITIAL_STATES = {  # constant non-zero initial states: the state every sequence starts from
    "lstm_constant": Spec(features=4, hidden=(6,), state="nonzero"),
    "lstm_constant_of_shape_ones": Spec(features=3, hidden=(5,), state="constant_of_shape_ones"),
    "gru_constant": Spec(features=4, hidden=(6,), cell=("GRU",), state="nonzero"),
    "bidirectional_lstm_constant": Spec(features=3, hidden=(4,), bidirectional=(True,), state="nonzero"),
    "layout1_lstm_constant": Spec(features=3, hidden=(5,), layout=1, batch_first=True, state="nonzero"),
}


@pytest.mark.parametrize("key", sorted(INITIAL_STATES))
def test_constant_initial_states_are_read(key, tmp_path):
    model = check_spec(INITIAL_STATES[key], tmp_path)
    layer = model.recurrent_layers[0]
    first = getattr(layer, "forward", layer)
    assert first.initial_h is not None and np.any(first.initial_h)


def test_initial_state_varying_over_the_batch_is_refused(tmp_path):
    model, node = lstm_model(state="nonzero")
    name = node.input[5]
    for init in model.graph.initializer:
        if init.name == name:
            value = numpy_helper.to_array(init).copy()
            value[:, 1] += 0.5
            init.CopyFrom(numpy_helper.from_array(value, name))
    with pytest.raises(UnsupportedModelError, match="differs between batch entries"):
        load_onnx(save(model, tmp_path))


STATE_NOTES = {  # streaming exports: the initial states are graph inputs, mapped to NAME_state_t
    "lstm": ["graph input 'h0' is the initial hidden state of layer 0: it maps to NAME_state_t.hidden_0 "
             "(zero after NAME_reset)",
             "graph input 'c0' is the initial cell state of layer 0: it maps to NAME_state_t.cell_0 "
             "(zero after NAME_reset)"],
    "lstm_batch_first": ["graph input 'h0' is the initial hidden state of layer 0: it maps to "
                         "NAME_state_t.hidden_0 (zero after NAME_reset)"],
    "lstm_layout1": ["graph input 'c0' is the initial cell state of layer 0: it maps to NAME_state_t.cell_0 "
                     "(zero after NAME_reset)"],
    "lstm_layout1_transpose": ["graph input 'h0' is the initial hidden state of layer 0"],
    "stacked": ["graph input 'h0' holds the initial hidden states of layers 0 and 1: they map to "
                "NAME_state_t.hidden_0, NAME_state_t.hidden_1 (zero after NAME_reset)",
                "graph input 'c0' holds the initial cell states of layers 0 and 1: they map to "
                "NAME_state_t.cell_0, NAME_state_t.cell_1 (zero after NAME_reset)"],
    "gru": ["graph input 'h0' is the initial hidden state of layer 0: it maps to NAME_state_t.hidden_0 "
            "(zero after NAME_reset)"],
    "bidirectional": ["graph input 'h0' holds the initial hidden states of bidirectional layer 0: they map to "
                      "NAME_state_t.hidden_0f, NAME_state_t.hidden_0b (zero after NAME_reset)",
                      "graph input 'c0' holds the initial cell states of bidirectional layer 0: they map to "
                      "NAME_state_t.cell_0f, NAME_state_t.cell_0b (zero after NAME_reset)"],
}


def run_with_zero_states(streaming, path: Path, x: np.ndarray) -> np.ndarray:
    """The graph's `output` run on x with every state input zero."""
    case = streaming.case
    feeds = {"x": model_input(case, x)}
    feeds.update({name: np.zeros(shape, np.float32) for name, shape in streaming.states.items()})
    if case.runner == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([streaming.output], feeds)[0]
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(onnx.load(str(path))).run([streaming.output], feeds)[0]


@pytest.mark.parametrize("kind", sorted(STATE_NOTES))
def test_state_graph_inputs_map_to_the_state_struct(kind, tmp_path):
    streaming = state_input_case(kind)
    case = streaming.case
    path = save(case.model, tmp_path, kind)
    with pytest.raises(UnsupportedModelError, match="output=NAME"):  # y, h_n (and c_n): the user picks
        inspect_onnx(path)
    imported = inspect_onnx(path, output=streaming.output)
    assert imported.input_name == "x" and imported.input_layout == case.input_layout
    assert "".join(AXIS_LETTERS[a] for a in imported.output_axes) == case.output_axes
    model = imported.model
    for layer in model.recurrent_layers:  # no constant initial state: reset() starts from zeros
        for part in (layer.forward, layer.backward) if isinstance(layer, BidirectionalLayer) else (layer,):
            assert part.initial_h is None and getattr(part, "initial_c", None) is None
    for expected in STATE_NOTES[kind]:
        assert any(note.startswith(expected) for note in model.notes), (expected, model.notes)
    x = np.random.default_rng(1).standard_normal((case.batch, case.steps, case.features)).astype(np.float32)
    expected = to_reference_layout(run_with_zero_states(streaming, path, x), case.output_axes)
    got = forward(model, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)


def test_state_graph_input_of_the_final_state_output(tmp_path):
    """h_n of a one-layer streaming GRU is its Y_h: importable as the output too."""
    streaming = state_input_case("gru")
    model = load_onnx(save(streaming.case.model, tmp_path), output="h_n")
    assert model.last_step_from == "final_state" and len(model.notes) == 3


def test_state_graph_input_on_the_data_path_is_refused(tmp_path):
    path = save(state_input_case("state_on_data_path").case.model, tmp_path)
    with pytest.raises(UnsupportedModelError) as info:
        load_onnx(path, output="y")
    message = one_line(info.value)
    for fragment in ("'add_state' (Add)", "graph input 'h0'", "initial state of node 'lstm_0' (LSTM)", "initial_h"):
        assert fragment in message, message


def test_c_n_of_a_streaming_export_stays_refused(tmp_path):
    path = save(state_input_case("lstm").case.model, tmp_path)
    with pytest.raises(UnsupportedModelError, match="Y_c"):
        load_onnx(path, output="c_n")


def check_spec(spec: Spec, tmp_path: Path):
    case = build_case(spec)
    return check_against_graph(case, save(case.model, tmp_path))


# --- supported graphs ----------------------------------------------------------------------

SINGLE_LAYER = {
    "forward": Spec(features=4, hidden=(8,)),
    "reverse": Spec(features=3, hidden=(5,), reverse=(True,), batch=4),
    "layout1_batch_first": Spec(features=6, hidden=(7,), layout=1, batch_first=True),
    "layout1_reverse_time_major_input": Spec(features=2, hidden=(3,), layout=1, reverse=(True,)),
    "batch_first_transpose": Spec(features=5, hidden=(16,), batch_first=True, steps=12, batch=4),
    "no_bias_tiny": Spec(features=1, hidden=(1,), bias=False, steps=5),
    "state_constant_zeros": Spec(hidden=(9,), state="zeros"),
    "state_constant_of_shape": Spec(state="constant_of_shape", batch_first=True, constant_nodes=True),
    "state_expand_wide": Spec(features=32, hidden=(32,), state="expand", steps=20),
    "state_constant_of_shape_layout1": Spec(state="constant_of_shape", layout=1, batch_first=True),
    "state_expand_layout1": Spec(state="expand", layout=1, hidden=(4,)),
    "raw_y": Spec(select="raw_y"),
    "raw_y_layout1": Spec(select="raw_y", layout=1),
    "y_h_unsqueezed": Spec(select="y_h", hidden=(11,)),
    "y_h_layout1": Spec(select="y_h", layout=1),
    "y_h_reverse_squeezed": Spec(select="y_h_squeezed", reverse=(True,)),
    "static_shape": Spec(static_shape=True, batch_first=True, select="gather", head=(("gemm", 3, None),)),
    "opset11": Spec(opset=11, batch_first=True, constant_nodes=True, state="constant_of_shape"),
}


@pytest.mark.parametrize("spec", SINGLE_LAYER.values(), ids=SINGLE_LAYER.keys())
def test_single_layer_matches_graph(spec, tmp_path):
    model = check_spec(spec, tmp_path)
    assert len(model.recurrent_layers) == 1
    assert model.recurrent_layers[0].reverse == bool(spec.reverse and spec.reverse[0])
    assert model.sequence_output == (spec.select in ("sequence", "raw_y"))


STACKED = {
    "two_squeeze_legacy_style": Spec(features=3, hidden=(8, 5), batch_first=True, state="constant_of_shape",
                                     constant_nodes=True),
    "two_reshape_reverse_top": Spec(hidden=(4, 4), link="reshape", reverse=(False, True)),
    "three_dynamo_style": Spec(features=4, hidden=(10, 10, 10), link="dynamo", state="expand", steps=9),
    "three_layout1_reshape": Spec(hidden=(5, 7, 3), layout=1, link="reshape", batch_first=True),
    "three_mixed_directions": Spec(hidden=(12, 32, 2), reverse=(True, False, True), steps=20, batch=5),
}


@pytest.mark.parametrize("spec", STACKED.values(), ids=STACKED.keys())
def test_stacked_layers_match_graph(spec, tmp_path):
    model = check_spec(spec, tmp_path)
    assert [l.hidden_size for l in model.recurrent_layers] == list(spec.hidden)
    assert [l.name for l in model.recurrent_layers] == [f"lstm_{k}" for k in range(len(spec.hidden))]


HEADS = {
    "gemm_transB1_gather_last": Spec(batch_first=True, select="gather", head=(("gemm", 5, None),)),
    "gemm_transB0_alpha_beta_h_n": Spec(select="y_h_gather", head=(("gemm_t0", 3, "Tanh"),)),
    "matmul_add_relu_per_step_softmax": Spec(head=(("matmul", 8, "Relu"), ("matmul", 3, None)), softmax="Softmax"),
    "matmul_relu_sigmoid_batch_first": Spec(batch_first=True, head=(("matmul", 6, "Relu"), ("matmul", 2, "Sigmoid"))),
    "slice_last_gemm_logsoftmax": Spec(select="slice", head=(("gemm", 4, "Relu"), ("gemm", 3, None)),
                                       softmax="LogSoftmax"),
    "slice_last_matmul_keeps_unit_axis": Spec(select="slice", head=(("matmul", 4, "Tanh"),)),
    "gather_step0_of_reverse": Spec(select="gather", reverse=(True,), head=(("gemm", 3, None),), softmax="Softmax"),
    "slice_step0_of_reverse": Spec(select="slice", reverse=(True,), batch_first=True),
    "y_h_gemm_logsoftmax": Spec(select="y_h_squeezed", head=(("gemm", 4, None),), softmax="LogSoftmax"),
    "layout1_gather_gemm_sigmoid": Spec(layout=1, batch_first=True, select="gather", head=(("gemm", 3, "Sigmoid"),)),
    "weights_computed_in_graph": Spec(in_graph_weights=True, hidden=(6, 4), head=(("matmul", 3, None),)),
    "weights_in_graph_constant_nodes": Spec(in_graph_weights=True, constant_nodes=True, state="constant_of_shape",
                                            select="gather", head=(("gemm", 2, "Relu"),)),
}


@pytest.mark.parametrize("spec", HEADS.values(), ids=HEADS.keys())
def test_heads_match_graph(spec, tmp_path):
    model = check_spec(spec, tmp_path)
    assert [d.output_size for d in model.head] == [units for _, units, _ in spec.head]
    assert [d.activation for d in model.head] == [Activation(a.lower()) if a else Activation.NONE
                                                 for _, _, a in spec.head]
    assert model.final_softmax == (spec.softmax.lower() if spec.softmax else None)


LAST_STEP_FROM = {
    "gather_step0_of_reverse_is_final_state": (Spec(select="gather", reverse=(True,)), "final_state"),
    "y_h_of_reverse_is_final_state": (Spec(select="y_h_squeezed", reverse=(True,)), "final_state"),
    "gather_last_of_reverse_is_last_index": (Spec(select="gather_last", reverse=(True,), head=(("gemm", 3, None),)),
                                             "last_index"),
    "slice_last_of_reverse_is_last_index": (Spec(select="slice_last", reverse=(True,), batch_first=True),
                                            "last_index"),
    "gather_last_of_forward": (Spec(select="gather_last"), "final_state"),  # the same for forward layers
}


@pytest.mark.parametrize("spec, expected", LAST_STEP_FROM.values(), ids=LAST_STEP_FROM.keys())
def test_last_step_of_reverse_layers(spec, expected, tmp_path):
    """Y_h and step 0 of a reverse layer are its final state; out[:, -1] is step T-1, which a
    reverse layer reaches after one step."""
    model = check_spec(spec, tmp_path)
    assert not model.sequence_output and model.last_step_from == expected


# --- GRU -----------------------------------------------------------------------------------

GRU = {
    "lbr1_forward": Spec(cell=("GRU",), hidden=(8,)),
    "lbr0_forward_batch_first": Spec(cell=("GRU",), linear_before_reset=0, hidden=(6,), batch_first=True),
    "lbr1_reverse": Spec(cell=("GRU",), reverse=(True,), hidden=(5,), batch=4),
    "lbr0_reverse_y_h": Spec(cell=("GRU",), linear_before_reset=0, reverse=(True,), select="y_h_squeezed"),
    "lbr0_no_bias_legacy_zero_state": Spec(cell=("GRU",), linear_before_reset=0, bias=False,
                                           state="constant_of_shape", constant_nodes=True, batch_first=True),
    "lbr1_expand_state_wide": Spec(cell=("GRU",), features=32, hidden=(32,), state="expand", steps=20),
    "lbr1_constant_zero_state_gather_gemm": Spec(cell=("GRU",), state="zeros", select="gather",
                                                 head=(("gemm", 3, "Tanh"),), softmax="Softmax"),
    "layout1_lbr0": Spec(cell=("GRU",), layout=1, batch_first=True, linear_before_reset=0),
    "layout1_lbr1_reverse_y_h": Spec(cell=("GRU",), layout=1, reverse=(True,), select="y_h"),
    "weights_computed_in_graph": Spec(cell=("GRU",), in_graph_weights=True, head=(("matmul", 3, None),)),
    "stacked_dynamo_style": Spec(cell=("GRU", "GRU"), hidden=(12, 12), link="dynamo", state="expand",
                                 batch_first=True, select="gather", head=(("gemm", 5, None),)),
    "stacked_gru_on_lstm_reverse_top": Spec(cell=("LSTM", "GRU"), hidden=(7, 5), reverse=(False, True),
                                            linear_before_reset=0, link="reshape"),
}


@pytest.mark.parametrize("spec", GRU.values(), ids=GRU.keys())
def test_gru_matches_graph(spec, tmp_path):
    model = check_spec(spec, tmp_path)
    reverse = list(spec.reverse) or [False] * len(spec.hidden)
    for layer, cell, back in zip(model.recurrent_layers, spec.cell, reverse):
        assert isinstance(layer, GruLayer if cell == "GRU" else LstmLayer)
        assert layer.reverse == back
        if cell == "GRU":
            assert layer.linear_before_reset == bool(spec.linear_before_reset)
    assert [l.name for l in model.recurrent_layers] == [f"{c.lower()}_{k}" for k, c in enumerate(spec.cell)]


def test_gru_biases_stay_apart(tmp_path):
    """Wb and Rb of the n gate differ in effect with linear_before_reset=1; both are kept."""
    case = build_case(Spec(cell=("GRU",), hidden=(3,), features=2))
    gru = find_node(case.model, "GRU")
    bias = numpy_helper.to_array(next(t for t in case.model.graph.initializer if t.name == gru.input[3]))
    layer = load_model(save(case.model, tmp_path)).recurrent_layers[0]
    # ONNX stacks z, r, h: the canonical order is z, r, n, so the order is unchanged.
    np.testing.assert_array_equal(layer.b_x.reshape(-1), bias[0, :9])
    np.testing.assert_array_equal(layer.b_h.reshape(-1), bias[0, 9:])


# --- bidirectional layers ------------------------------------------------------------------

BI = dict(bidirectional=(True,))
BIDIRECTIONAL = {
    # (spec, last_step_from of a last-step model, None for sequence models)
    "lstm_sequence_legacy_merge": (Spec(**BI, batch_first=True, state="constant_of_shape", constant_nodes=True),
                                   None),
    "lstm_sequence_dynamo_merge": (Spec(**BI, merge="dynamo", state="expand", steps=9), None),
    "lstm_sequence_gather_concat": (Spec(**BI, merge="gather_concat"), None),
    "lstm_sequence_slice_concat_per_step_head": (Spec(**BI, merge="slice_concat", head=(("matmul", 4, "Relu"),)),
                                                 None),
    "lstm_raw_y": (Spec(**BI, select="raw_y"), None),
    "lstm_raw_y_h": (Spec(**BI, select="y_h"), "final_state"),
    "lstm_y_h_merged_gemm": (Spec(**BI, select="y_h_merged", head=(("gemm", 3, None),)), "final_state"),
    "lstm_y_h_flatten_gemm": (Spec(**BI, select="y_h_flatten", head=(("gemm", 3, "Relu"),)), "final_state"),
    "gru_layout1_y_h_flatten": (Spec(**BI, cell=("GRU",), layout=1, select="y_h_flatten"), "final_state"),
    "lstm_y_h_concat_no_bias": (Spec(**BI, select="y_h_concat", bias=False), "final_state"),
    "lstm_gather_last_index_gemm": (Spec(**BI, select="gather", batch_first=True, head=(("gemm", 5, None),)),
                                    "last_index"),
    "lstm_slice_last_index": (Spec(**BI, select="slice", merge="dynamo"), "last_index"),
    "lstm_layout1_sequence": (Spec(**BI, layout=1, batch_first=True), None),
    "lstm_layout1_y_h_concat": (Spec(**BI, layout=1, select="y_h_concat", head=(("gemm", 2, None),)),
                                "final_state"),
    "lstm_in_graph_weights": (Spec(**BI, in_graph_weights=True, select="y_h_merged"), "final_state"),
    "lstm_sum_merge_per_step": (Spec(**BI, merge="sum", head=(("matmul", 3, None),)), None),
    "gru_sum_merge_last_index": (Spec(**BI, cell=("GRU",), merge="sum", select="gather"), "last_index"),
    "gru_lbr1_sequence": (Spec(**BI, cell=("GRU",), batch_first=True, merge="dynamo", state="expand"), None),
    "gru_lbr0_sequence": (Spec(**BI, cell=("GRU",), linear_before_reset=0), None),
    "gru_y_h_concat_gemm_softmax": (Spec(**BI, cell=("GRU",), select="y_h_concat", state="constant_of_shape",
                                         head=(("gemm", 4, None),), softmax="LogSoftmax"), "final_state"),
    "gru_lbr0_gather_last_index": (Spec(**BI, cell=("GRU",), linear_before_reset=0, select="gather",
                                        head=(("gemm", 3, "Sigmoid"),)), "last_index"),
    "gru_layout1_y_h_merged": (Spec(**BI, cell=("GRU",), layout=1, select="y_h_merged"), "final_state"),
    "gru_layout1_lbr0_raw_y": (Spec(**BI, cell=("GRU",), layout=1, linear_before_reset=0, select="raw_y"), None),
}


@pytest.mark.parametrize("spec, last_step_from", BIDIRECTIONAL.values(), ids=BIDIRECTIONAL.keys())
def test_bidirectional_matches_graph(spec, last_step_from, tmp_path):
    model = check_spec(spec, tmp_path)
    layer, = model.recurrent_layers
    cell = (list(spec.cell) or ["LSTM"])[0]
    assert isinstance(layer, BidirectionalLayer)
    assert isinstance(layer.forward, GruLayer if cell == "GRU" else LstmLayer)
    assert layer.merge == ("sum" if spec.merge == "sum" else "concat")
    assert layer.name == f"{cell.lower()}_0"
    assert (layer.forward.name, layer.backward.name) == (f"{layer.name}.forward", f"{layer.name}.backward")
    assert model.sequence_output == (last_step_from is None)
    if last_step_from:
        assert model.last_step_from == last_step_from


MIXED = {
    "bi_lstm_then_lstm": Spec(hidden=(6, 5), bidirectional=(True, False), batch_first=True),
    "lstm_then_bi_gru_h_n": Spec(hidden=(5, 4), bidirectional=(False, True), cell=("LSTM", "GRU"),
                                 select="y_h_concat", head=(("gemm", 3, None),)),
    "three_bi_lstm_dynamo": Spec(hidden=(6, 6, 6), bidirectional=(True,) * 3, merge="dynamo", link="dynamo",
                                 state="expand", steps=9),
    "bi_gru_reverse_lstm_bi_lstm_layout1": Spec(hidden=(4, 6, 3), bidirectional=(True, False, True),
                                                reverse=(False, True, False), cell=("GRU", "LSTM", "LSTM"), layout=1,
                                                link="reshape", batch_first=True, select="gather",
                                                head=(("gemm", 2, None),)),
    "bi_concat_then_reverse_gru_last_index": Spec(hidden=(4, 6), bidirectional=(True, False), reverse=(False, True),
                                                  cell=("LSTM", "GRU"), merge="gather_concat", select="gather_last",
                                                  head=(("gemm", 3, None),)),
    "bi_sum_then_bi_gru_sum": Spec(hidden=(5, 5), bidirectional=(True, True), cell=("LSTM", "GRU"), merge="sum",
                                   head=(("matmul", 2, None),)),
    "wide_bi_lstm_bi_gru": Spec(features=16, hidden=(32, 16), bidirectional=(True, True), cell=("LSTM", "GRU"),
                                steps=20, batch=5, select="y_h_merged", head=(("gemm", 8, "Relu"), ("gemm", 3, None))),
}


H_N = {  # PyTorch's h_n: the layers' Y_h concatenated, then its last entries
    "lstm2_h_n_last": Spec(hidden=(6, 6), select="h_n_gather", head=(("gemm", 3, None),)),
    "lstm3_reverse_top_h_n_slice": Spec(hidden=(4, 4, 4), reverse=(False, False, True), select="h_n_slice",
                                        state="constant_of_shape", constant_nodes=True),
    "gru2_layout1_h_n_last": Spec(hidden=(5, 5), cell=("GRU", "GRU"), layout=1, link="reshape",
                                  select="h_n_gather", head=(("gemm", 2, "Sigmoid"),)),
    "bi_gru2_h_n_concat": Spec(hidden=(6, 6), bidirectional=(True, True), cell=("GRU", "GRU"), select="h_n_gather",
                               merge="dynamo", head=(("gemm", 3, None),)),
    "lstm_then_bi_lstm_h_n_slices": Spec(hidden=(5, 5), bidirectional=(False, True), select="h_n_slice",
                                         head=(("gemm", 4, None),)),
    "bi_lstm_then_gru_h_n_last": Spec(hidden=(7, 7), bidirectional=(True, False), cell=("LSTM", "GRU"),
                                      select="h_n_gather"),
    "single_layer_h_n": Spec(hidden=(8,), select="h_n_gather", reverse=(True,)),
}


@pytest.mark.parametrize("spec", H_N.values(), ids=H_N.keys())
def test_h_n_of_stacks_matches_graph(spec, tmp_path):
    model = check_spec(spec, tmp_path)
    assert len(model.recurrent_layers) == len(spec.hidden)
    assert not model.sequence_output and model.last_step_from == "final_state"


@pytest.mark.parametrize("spec", MIXED.values(), ids=MIXED.keys())
def test_mixed_stacks_match_graph(spec, tmp_path):
    model = check_spec(spec, tmp_path)
    kinds = [isinstance(l, BidirectionalLayer) for l in model.recurrent_layers]
    assert kinds == list(spec.bidirectional)
    widths = [(2 if bi and spec.merge != "sum" else 1) * h for bi, h in zip(spec.bidirectional, spec.hidden)]
    assert [l.hidden_size for l in model.recurrent_layers] == widths


def test_plumbing_after_the_head(tmp_path):
    """Flatten, Dropout, Identity, Cast and Unsqueeze only move or keep axes."""
    case = build_case(Spec(batch_first=True, select="gather", head=(("gemm", 3, "Relu"),)))
    append_node(case.model, "Flatten", axis=1)
    append_node(case.model, "Dropout")
    append_node(case.model, "Identity")
    append_node(case.model, "Cast", to=onnx.TensorProto.FLOAT)
    append_node(case.model, "Unsqueeze", [np.array([1], np.int64)])
    case.output_axes = "n1f"
    check_against_graph(case, save(case.model, tmp_path))


def test_names_come_from_file_and_nodes(tmp_path):
    case = build_case(Spec(hidden=(4, 3), select="gather", head=(("gemm", 2, None), ("gemm", 2, None)),
                           names={"lstm0": "encoder", "lstm1": "", "dense0": "classifier", "dense1": ""}))
    model = load_model(save(case.model, tmp_path, "my_kws.v2"))
    assert model.name == "my_kws.v2"
    assert [l.name for l in model.recurrent_layers] == ["encoder", "lstm1"]
    assert [d.name for d in model.head] == ["classifier", "dense1"]


def test_graph_input_layout(tmp_path):
    batch_first = save(build_case(Spec(batch_first=True)).model, tmp_path, "bf")
    time_major = save(build_case(Spec(layout=1)).model, tmp_path, "tm")  # layout=1 behind a Transpose
    assert graph_input_layout(batch_first) == "batch_first"
    assert graph_input_layout(time_major) == "time_major"


def test_unused_branches_are_ignored(tmp_path):
    """An unsupported node outside the output's ancestry (here on Y_c) does not matter."""
    model = build_case(Spec()).model
    lstm = find_node(model, "LSTM")
    model.graph.node.append(onnx.helper.make_node("LeakyRelu", [lstm.output[2]], ["unused"], name="dangling"))
    load_onnx(save(model, tmp_path))


def test_choosing_among_several_outputs(tmp_path):
    case = build_case(Spec())
    lstm = find_node(case.model, "LSTM")
    case.model.graph.output.append(onnx.helper.make_tensor_value_info(lstm.output[1], onnx.TensorProto.FLOAT, None))
    path = save(case.model, tmp_path)
    with pytest.raises(UnsupportedModelError) as info:
        load_model(path)
    message = one_line(info.value)
    assert case.model.graph.output[0].name in message and lstm.output[1] in message and "output" in message
    assert load_model(path, output=lstm.output[1]).sequence_output is False
    assert load_model(path, output=case.model.graph.output[0].name).sequence_output is True
    with pytest.raises(ModelFormatError, match="no output 'nope'"):
        load_model(path, output="nope")


# --- external data -------------------------------------------------------------------------

def save_external(model: onnx.ModelProto, folder: Path, name: str = "ext") -> Path:
    path = folder / f"{name}.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.onnx.data", size_threshold=64)  # shape constants stay inline, as exporters do
    return path


def relocate_external_data(path: Path, location: str) -> None:
    """Point every external tensor of the model at `location` (written as is in the proto)."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))


def test_external_data_is_loaded(tmp_path):
    case = build_case(Spec(hidden=(16,), head=(("matmul", 4, None),)))
    path = save_external(case.model, tmp_path)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 16 * 16 * 4
    check_against_graph(case, path)


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, where):
    folder = tmp_path / "model"
    folder.mkdir()
    path = save_external(build_case(Spec()).model, folder)
    outside = tmp_path / "outside.data"
    os.replace(folder / "ext.onnx.data", outside)  # a real file, so only the location is wrong
    if where == "symlink":
        (folder / "link.data").symlink_to(outside)
    location = {"parent": "../outside.data", "absolute": str(outside), "symlink": "link.data"}[where]
    relocate_external_data(path, location)
    with pytest.raises(ModelFormatError) as info:
        load_model(path)
    message = one_line(info.value)
    assert "outside" in message or "absolute" in message


def test_missing_external_data_file(tmp_path):
    path = save_external(build_case(Spec()).model, tmp_path)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelFormatError, match="missing"):
        load_model(path)


# --- refusals ------------------------------------------------------------------------------

def one_line(error: Exception) -> str:
    message = str(error)
    assert message and "\n" not in message, repr(message)
    return message


def lstm_model(op="LSTM", **spec):
    model = build_case(Spec(**spec)).model
    return model, find_node(model, op)


def edit_lstm(edit, op="LSTM", **spec):
    model, lstm = lstm_model(op, **spec)
    edit(model, lstm)
    return model


def with_index(op_type: str, index: int, **spec):
    """A model whose Gather (or Slice start/end) picks another time step."""
    model = build_case(Spec(**spec)).model
    node = find_node(model, op_type)
    if op_type == "Gather":
        set_input(model, node, 1, np.array(index, np.int64), "index")
    else:
        set_input(model, node, 1, np.array([index], np.int64), "starts")
        set_input(model, node, 2, np.array([index + 1], np.int64), "ends")
    return model


def with_nan_weight(**spec):
    model, lstm = lstm_model(**spec)
    weight = next(t for t in model.graph.initializer if t.name == lstm.input[1])
    values = numpy_helper.to_array(weight).copy()
    values[0, 0, 0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    return model


def with_state_input(op="LSTM", **spec):
    model, lstm = lstm_model(op, **spec)
    model.graph.input.append(onnx.helper.make_tensor_value_info("h0", onnx.TensorProto.FLOAT, [1, "batch", 8]))
    while len(lstm.input) < 6:
        lstm.input.append("")
    lstm.input[5] = "h0"
    return model


def appended(op_type, extra=(), spec=None, **attrs):
    model = build_case(Spec(**(spec or {}))).model
    append_node(model, op_type, extra, name=f"my_{op_type.lower()}", **attrs)
    return model


def y_c_output():
    model, lstm = lstm_model()
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(lstm.output[2], onnx.TensorProto.FLOAT, None))
    return model


# (model builder, error class, fragments the one-line message must contain)
REFUSALS = {
    "bidirectional_with_one_direction_of_weights": (
        lambda: edit_lstm(lambda m, n: set_attribute(n, "direction", "bidirectional")),
        ModelFormatError, ["'lstm_0' (LSTM)", "[1, 32, 4]", "[2, 4*hidden, input]", "bidirectional"]),
    "rnn": (lambda: recurrent_case("RNN", "rnn_0"), UnsupportedModelError,
            ["'rnn_0' (RNN)", "not supported yet", "only LSTM and GRU"]),
    "sequence_lens": (lambda: edit_lstm(lambda m, n: set_input(m, n, 4, np.full(3, 7, np.int32), "lens")),
                      UnsupportedModelError, ["'lstm_0' (LSTM)", "sequence_lens"]),
    "activations": (lambda: edit_lstm(lambda m, n: set_attribute(n, "activations", ["Sigmoid", "Relu", "Tanh"])),
                    UnsupportedModelError, ["'lstm_0' (LSTM)", "activations", "Relu"]),
    "hidden_size_mismatch": (lambda: edit_lstm(lambda m, n: set_attribute(n, "hidden_size", 10)),
                             ModelFormatError, ["'lstm_0' (LSTM)", "hidden_size=10", "proj_size"]),
    "nan_weight": (with_nan_weight, ModelFormatError, ["'lstm_0' (LSTM)", "NaN"]),
    "unsupported_op": (lambda: appended("LeakyRelu", spec=dict(head=(("matmul", 3, None),))),
                       UnsupportedModelError, ["'my_leakyrelu' (LeakyRelu)", "supported: LSTM"]),
    "scaling_the_output": (lambda: appended("Mul", [np.float32(2.0)]),
                           UnsupportedModelError, ["'my_mul' (Mul)", "data path"]),
    "custom_domain": (lambda: appended("Swish", domain="com.example"),
                      UnsupportedModelError, ["'my_swish' (Swish)", "com.example"]),
    "activation_on_lstm_output": (lambda: appended("Tanh"), UnsupportedModelError,
                                  ["'my_tanh' (Tanh)", "directly on an LSTM output"]),
    "reshape_merging_axes": (lambda: appended("Reshape", [np.array([-1, 8], np.int64)]),
                             UnsupportedModelError, ["'my_reshape' (Reshape)", "size-1 axes"]),
    "softmax_over_time": (lambda: appended("Softmax", spec=dict(head=(("matmul", 3, None),)), axis=0),
                          UnsupportedModelError, ["'my_softmax' (Softmax)", "feature axis"]),
    "dense_before_lstm": (dense_before_lstm_case, UnsupportedModelError,
                          ["'input_projection' (MatMul)", "before the first LSTM"]),
    "y_c_output": (y_c_output, UnsupportedModelError, ["Y_c", "'lstm_0' (LSTM)"]),
    "gather_middle_step": (lambda: with_index("Gather", 2, select="gather"), UnsupportedModelError,
                           ["(Gather)", "other than the last"]),
    "gather_step0_of_forward": (lambda: with_index("Gather", 0, select="gather"), UnsupportedModelError,
                                ["(Gather)", "other than the last"]),
    "slice_middle_step": (lambda: with_index("Slice", 2, select="slice"), UnsupportedModelError,
                          ["(Slice)", "other than the last"]),
    "rank2_input": (rank2_input_case, UnsupportedModelError, ["graph input 'x'", "rank 2"]),
    # GRU: the same refusals as LSTM where they apply
    "gru_sequence_lens": (lambda: edit_lstm(lambda m, n: set_input(m, n, 4, np.full(3, 7, np.int32), "lens"),
                                            op="GRU", cell=("GRU",)),
                          UnsupportedModelError, ["'gru_0' (GRU)", "sequence_lens"]),
    "gru_activations": (lambda: edit_lstm(lambda m, n: set_attribute(n, "activations", ["Sigmoid", "Relu"]),
                                          op="GRU", cell=("GRU",)),
                        UnsupportedModelError, ["'gru_0' (GRU)", "activations", "Relu", "Sigmoid, Tanh"]),
    "gru_activation_alpha": (lambda: edit_lstm(lambda m, n: set_attribute(n, "activation_alpha", [0.5]),
                                               op="GRU", cell=("GRU",)),
                             UnsupportedModelError, ["'gru_0' (GRU)", "activation_alpha"]),
    "gru_linear_before_reset_2": (lambda: edit_lstm(lambda m, n: set_attribute(n, "linear_before_reset", 2),
                                                    op="GRU", cell=("GRU",)),
                                  ModelFormatError, ["'gru_0' (GRU)", "linear_before_reset=2"]),
    "gru_hidden_size_mismatch": (lambda: edit_lstm(lambda m, n: set_attribute(n, "hidden_size", 10),
                                                   op="GRU", cell=("GRU",)),
                                 ModelFormatError, ["'gru_0' (GRU)", "hidden_size=10"]),
    "gru_y_h_gather_middle": (lambda: with_index("Gather", 3, select="gather", cell=("GRU",)),
                              UnsupportedModelError, ["(Gather)", "other than the last"]),
    # bidirectional layers
    "bidirectional_sequence_lens": (lambda: edit_lstm(lambda m, n: set_input(m, n, 4, np.full(3, 7, np.int32), "lens"),
                                                      bidirectional=(True,)),
                                    UnsupportedModelError, ["'lstm_0' (LSTM)", "sequence_lens"]),
    "bidirectional_activations": (lambda: edit_lstm(lambda m, n: set_attribute(
        n, "activations", ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Tanh"]), bidirectional=(True,)),
        UnsupportedModelError, ["'lstm_0' (LSTM)", "activations", "Relu"]),
    "bidirectional_backward_state_only": (lambda: bidirectional_case("backward_only_into_head"), UnsupportedModelError,
                                          ["'fc' (Gemm)", "only the backward direction", "bi_0", "h_n[-2]"]),
    "bidirectional_forward_state_output": (lambda: bidirectional_case("forward_only_output", "GRU"),
                                           UnsupportedModelError, ["only the forward direction", "'bi_0'"]),
    "bidirectional_step0": (lambda: bidirectional_case("step0_of_merged_sequence"), UnsupportedModelError,
                            ["'first_step' (Gather)", "time step 0 of bidirectional layer 'bi_0'"]),
    "bidirectional_concat_backward_first": (lambda: bidirectional_case("concat_backward_first"),
                                            UnsupportedModelError, ["'swapped' (Concat)", "[forward, backward]"]),
    "bidirectional_concat_along_batch": (lambda: bidirectional_case("concat_along_batch"), UnsupportedModelError,
                                         ["'stacked' (Concat)", "along axis 0"]),
    "bidirectional_dense_per_direction": (lambda: bidirectional_case("dense_on_unmerged_directions"),
                                          UnsupportedModelError, ["'per_direction_fc' (MatMul)", "num_directions"]),
    "bidirectional_reshape_without_transpose": (lambda: bidirectional_case("reshape_without_transpose"),
                                                UnsupportedModelError, ["'wrong_merge' (Reshape)", "num_directions"]),
    "bidirectional_sum_of_final_states": (lambda: bidirectional_case("sum_of_final_states", "GRU"),
                                          UnsupportedModelError, ["'state_sum' (Add)", "whole sequence"]),
    "bidirectional_mul_merge": (lambda: bidirectional_case("mul_merge"), UnsupportedModelError,
                                ["'product' (Mul)", "data path"]),
    # PyTorch's h_n: the layers' final states concatenated
    "h_n_as_output": (lambda: h_n_case("output"), UnsupportedModelError, ["output", "h_n", "h_n[-1]"]),
    "h_n_into_gemm": (lambda: h_n_case("gemm_on_all_layers"), UnsupportedModelError, ["'fc' (Gemm)", "h_n"]),
    "h_n_two_entries": (lambda: h_n_case("slice_two_entries"), UnsupportedModelError,
                        ["'last_two' (Slice)", "stacked final states"]),
    "h_n_of_different_widths": (lambda: h_n_case("different_widths"), ModelFormatError,
                                ["'h_n' (Concat)", "different widths"]),
    "recurrent_layer_on_one_direction": (lambda: bidirectional_case("recurrent_on_one_direction"),
                                         UnsupportedModelError, ["'after_forward_only' (LSTM)", "forward direction"]),
}


@pytest.mark.parametrize("build, error, fragments", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_are_one_clear_line(build, error, fragments, tmp_path):
    path = save(build(), tmp_path)
    with pytest.raises(error) as info:
        load_model(path)
    message = one_line(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_unreadable_file_names_the_path(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\x08\x96\x01\xff\xfe not a protobuf" * 10)
    with pytest.raises(ModelFormatError) as info:
        load_model(path)
    assert str(path) in one_line(info.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(ModelFormatError, match="not found"):
        load_model(tmp_path / "absent.onnx")
    other = tmp_path / "model.pb"
    other.write_bytes(b"")
    with pytest.raises(UnsupportedModelError) as info:
        load_model(other)
    assert ".pb" in one_line(info.value) and "ONNX (.onnx)" in str(info.value)


GATE_OPTIONS = {  # ONNX LSTM attributes, checked against onnxruntime (onnx.reference ignores clip)
    "clip": {"clip": 0.75},
    "input_forget": {"input_forget": 1},
    "clip_and_input_forget": {"clip": 2.0, "input_forget": 1},
}


@pytest.mark.parametrize("cell,lbr", [("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_gru_clip(cell, lbr, bidirectional, tmp_path):
    case = build_case(Spec(features=4, hidden=(6,), cell=(cell,), linear_before_reset=lbr,
                           bidirectional=(bidirectional,)))
    set_attribute(find_node(case.model, "GRU"), "clip", 0.6)
    model = check_against_graph(case, save(case.model, tmp_path))
    layer = model.recurrent_layers[0]
    assert all(part.clip == pytest.approx(0.6) for part in ((layer.forward, layer.backward) if bidirectional
                                                             else (layer,)))


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_peepholes(clip, bidirectional, tmp_path):
    """P [D, 3H] in ONNX order (i, o, f); it and ft see Ct-1, ot sees Ct (checked against onnxruntime)."""
    case = build_case(Spec(features=4, hidden=(6,), bidirectional=(bidirectional,)))
    node = find_node(case.model, "LSTM")
    directions = 2 if bidirectional else 1
    set_input(case.model, node, 7, np.random.default_rng(5).normal(0, 1, (directions, 18)).astype(np.float32), "P")
    if clip:
        set_attribute(node, "clip", clip)
    model = check_against_graph(case, save(case.model, tmp_path))
    layer = model.recurrent_layers[0]
    assert all(part.peephole is not None for part in ((layer.forward, layer.backward) if bidirectional else (layer,)))


@pytest.mark.parametrize("key", sorted(GATE_OPTIONS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_clip_and_input_forget(key, bidirectional, tmp_path):
    options = GATE_OPTIONS[key]
    spec = Spec(features=4, hidden=(6,), bidirectional=(bidirectional,))
    case = build_case(spec)
    for name, value in options.items():
        set_attribute(find_node(case.model, "LSTM"), name, value)
    assert case.runner == "onnxruntime"
    model = check_against_graph(case, save(case.model, tmp_path))
    layer = model.recurrent_layers[0]
    for part in (layer.forward, layer.backward) if bidirectional else (layer,):
        assert part.clip == options.get("clip") and part.input_forget == bool(options.get("input_forget"))


def test_every_error_is_a_domain_error(tmp_path):
    """The CLI prints LstmEdgeError as one line; nothing else may escape the importer."""
    for build, _, _ in REFUSALS.values():
        with pytest.raises(LstmEdgeError):
            load_model(save(build(), tmp_path))


@pytest.mark.parametrize("op, spec", [("LSTM", {}), ("GRU", {"cell": ("GRU",)})])
def test_initial_h_fed_by_a_graph_input_imports(op, spec, tmp_path):
    model = load_onnx(save(with_state_input(op, **spec), tmp_path))
    assert model.recurrent_layers[0].initial_h is None
    assert "graph input 'h0' is the initial hidden state of layer 0: it maps to NAME_state_t.hidden_0 " \
           "(zero after NAME_reset)" in model.notes


# --- sequence_lens --------------------------------------------------------------------------

LENS_NOTE = ("graph input 'lens' gives per-sequence lengths: run each sequence with NAME_run(..., steps=len) "
             "(the float reference and the simulator take sequences of one length)")
LENS_CASES = {  # onnxruntime implements sequence_lens (onnx.reference ignores it): layout 0 only
    "lstm_sequence": (Spec(features=4, hidden=(6,)), "direct"),
    "lstm_y_h": (Spec(features=4, hidden=(6,), select="y_h_squeezed"), "identity"),
    "lstm_reverse_y_h": (Spec(features=4, hidden=(6,), reverse=(True,), select="y_h_squeezed"), "direct"),
    "gru_reverse_step0": (Spec(features=4, hidden=(6,), reverse=(True,), cell=("GRU",), select="gather"), "direct"),
    "gru_sequence": (Spec(features=4, hidden=(5,), cell=("GRU",)), "cast"),
    "gru_y_h": (Spec(features=4, hidden=(5,), cell=("GRU",), select="y_h_squeezed"), "direct"),
    "bidirectional_lstm_sequence": (Spec(features=3, hidden=(4,), bidirectional=(True,)), "direct"),
    "bidirectional_lstm_y_h": (Spec(features=3, hidden=(4,), bidirectional=(True,), select="y_h_merged"), "direct"),
    "bidirectional_gru_sequence": (Spec(features=3, hidden=(4,), bidirectional=(True,), cell=("GRU",)), "identity"),
    "bidirectional_gru_y_h": (Spec(features=3, hidden=(4,), bidirectional=(True,), cell=("GRU",),
                                   select="y_h_merged"), "direct"),
    "stacked_batch_first_head": (Spec(features=4, hidden=(6, 5), cell=("LSTM", "GRU"), batch_first=True,
                                      head=(("matmul", 3, "Tanh"),)), "direct"),
    "stacked_bidirectional_y_h_head": (Spec(features=3, hidden=(4, 5), bidirectional=(True, True),
                                            select="y_h_merged", head=(("gemm", 2, None),)), "direct"),
}


def run_with_lens(case, path: Path, x: np.ndarray, lens: np.ndarray, via: str) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"x": model_input(case, x), "lens": lens.astype(np.int64 if via == "cast" else np.int32)}
    return to_reference_layout(session.run(None, feeds)[0], case.output_axes)


@pytest.mark.parametrize("key", sorted(LENS_CASES))
def test_sequence_lens_graph_input(key, tmp_path):
    """Each batch entry of the graph run with sequence_lens equals the reference on that
    sequence cut to its length (the final state, or the first len steps); full lengths give
    the whole batch."""
    spec, via = LENS_CASES[key]
    case = build_case(spec)
    with_lens_input(case.model, via)
    path = save(case.model, tmp_path, key)
    imported = inspect_onnx(path)
    assert imported.input_name == "x" and imported.input_layout == case.input_layout
    model = imported.model
    assert LENS_NOTE in model.notes
    x = np.random.default_rng(2).standard_normal((case.batch, case.steps, case.features)).astype(np.float32)
    lens = np.array([case.steps, case.steps - 2, 3])
    expected = run_with_lens(case, path, x, lens, via)
    for n, length in enumerate(lens):
        got = forward(model, x[n:n + 1, :length])[0]
        want = expected[n, :length] if model.sequence_output else expected[n]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"sequence {n}, length {length}")
    full = run_with_lens(case, path, x, np.full(case.batch, case.steps), via)
    np.testing.assert_allclose(forward(model, x), full, rtol=0, atol=ATOL)


@pytest.mark.parametrize("op, spec", [("LSTM", {}), ("GRU", {"cell": ("GRU",)}),
                                      ("LSTM", {"bidirectional": (True,), "select": "y_h_merged"})])
def test_constant_full_length_sequence_lens_changes_nothing(op, spec, tmp_path):
    case = build_case(Spec(static_shape=True, **spec))
    set_input(case.model, find_node(case.model, op), 4, np.full(case.batch, case.steps, np.int32), "lens")
    model = check_against_graph(case, save(case.model, tmp_path))
    assert not any("per-sequence lengths" in note for note in model.notes)


LENS_REFUSALS = {
    "constant_shorter": (lambda: edit_lstm(lambda m, n: set_input(m, n, 4, np.array([7, 5, 7], np.int32), "lens"),
                                           static_shape=True),
                         ["'lstm_0' (LSTM)", "sequence_lens [7, 5, 7]", "sequence length 7"]),
    "gru_constant_all_shorter": (lambda: edit_lstm(lambda m, n: set_input(m, n, 4, np.full(3, 4, np.int32), "lens"),
                                                   op="GRU", cell=("GRU",), static_shape=True),
                                 ["'gru_0' (GRU)", "sequence_lens [4, 4, 4]", "sequence length 7"]),
    "constant_open_length": (lambda: edit_lstm(lambda m, n: set_input(m, n, 4, np.full(3, 7, np.int32), "lens")),
                             ["'lstm_0' (LSTM)", "sequence_lens", "leaves open"]),
    "lens_on_data_path": (lambda: edit_lstm(lambda m, n: lens_on_data_path(m)),
                          ["'add_lens' (Add)", "graph input 'lens'", "sequence_lens"]),
    "lens_of_one_layer_only": (lambda: edit_lstm(lambda m, n: with_lens_input(m, layers=[0]), hidden=(6, 5)),
                               ["graph input 'lens'", "not of layer 1"]),
    "lens_with_last_index": (lambda: edit_lstm(lambda m, n: with_lens_input(m), select="gather_last"),
                             ["(Gather)", "time step T-1", "'lstm_0'", "graph input 'lens'", "Y_h"]),
    "bidirectional_lens_with_last_slice": (lambda: edit_lstm(lambda m, n: with_lens_input(m), select="slice_last",
                                                             bidirectional=(True,)),
                                           ["(Slice)", "time step T-1", "'lstm_0'", "Y_h"]),
    "lens_float": (lambda: edit_lstm(lambda m, n: (with_lens_input(m), m.graph.input[-1].type.tensor_type.__setattr__(
        "elem_type", onnx.TensorProto.FLOAT))), ["graph input 'lens'", "int32"]),
}


@pytest.mark.parametrize("key", sorted(LENS_REFUSALS))
def test_sequence_lens_refusals(key, tmp_path):
    build, fragments = LENS_REFUSALS[key]
    with pytest.raises(UnsupportedModelError) as caught:
        load_onnx(save(build(), tmp_path))
    message = one_line(caught.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
