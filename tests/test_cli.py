"""The command line as a user meets it: the happy path end to end, and every kind of bad input
giving one `error:` line, exit code 2, no traceback and no output folder."""

import subprocess
import sys

import numpy as np
import onnx
import pytest

from conftest import REPO
from lstm_edge.bundle import load_bundle_quantized
from lstm_edge.simulator import simulate as run_sim
from onnx_cases import recurrent_case

TORCH_FIXTURES = REPO / "tests" / "fixtures" / "torch"
MODEL = TORCH_FIXTURES / "lstm2_last_fc.legacy.onnx"  # 2-layer LSTM(6, 12) -> last step -> Linear(12, 5)


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lstm_edge", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "calib.npy"
    np.save(path, np.random.default_rng(0).normal(0, 1, (64, 9, 6)).astype(np.float32))
    return path


def test_help_on_every_command():
    for command in ([], ["compile"], ["simulate"], ["verify"], ["inspect"]):
        result = cli(*command, "--help")
        assert result.returncode == 0 and "Usage:" in result.stdout
    assert "batch-first" in cli("compile", "--help").stdout  # the data layout is stated


def test_compile_simulate_verify_inspect(tmp_path, calib):
    out = tmp_path / "build" / "kws"
    result = cli("compile", MODEL, "--calib", calib, "-o", out, "--name", "kws")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["kws.c", "kws.float.npz", "kws.footprint.json",
                                                   "kws.footprint.txt", "kws.h", "kws.qmodel.json"]
    header = (out / "kws.h").read_text()
    for macro in ("KWS_INPUT_SIZE 6", "KWS_OUTPUT_SIZE 5", "KWS_SEQUENCE_OUTPUT 0", "KWS_INPUT_SCALE",
                  "KWS_INPUT_ZERO_POINT", "KWS_OUTPUT_SCALE", "KWS_OUTPUT_ZERO_POINT"):
        assert f"#define {macro}" in header

    x = np.random.default_rng(1).normal(0, 1, (20, 9, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    pred = tmp_path / "pred.npz"
    result = cli("simulate", out, "--input", tmp_path / "x.npy", "--output", pred, "--trace")
    assert result.returncode == 0, result.stderr
    with np.load(pred) as z:
        qmodel = load_bundle_quantized(out)
        assert z["x_q"].dtype == np.int8 and z["y_q"].dtype == np.int8 and z["y_q"].shape == (20, 5)
        assert np.array_equal(z["x_q"], qmodel.input_q.quantize(x))
        assert np.array_equal(z["y_q"], run_sim(qmodel, z["x_q"]))
        assert np.allclose(z["y"], (z["y_q"].astype(np.float64) - qmodel.output_q.zero_point)
                           * qmodel.output_q.scale)
        assert z["trace_layer1_gates"].shape == (9, 4, 20, 12)  # steps, gates, batch, units

    result = cli("verify", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: C == simulator")
    assert "argmax agreement" in result.stdout and "RMSE" in result.stdout

    for target in (MODEL, out):
        result = cli("inspect", target)
        assert result.returncode == 0, result.stderr
        assert "6 -> 12" in result.stdout and "state bytes per instance 72" in result.stdout.replace(":", "")


def test_verify_exits_1_when_the_c_differs(tmp_path, calib):
    out = tmp_path / "m"
    assert cli("compile", MODEL, "--calib", calib, "-o", out).returncode == 0
    c_file = out / "m.c"
    text = c_file.read_text()
    # Corrupt one constant the simulator reads from the quantized model: the hidden zero point.
    marker = ".hidden_zero_point = "
    start = text.index(marker) + len(marker)
    end = text.index(",", start)
    c_file.write_text(text[:start] + str(int(text[start:end]) + 1) + text[end:])
    result = cli("verify", out)
    assert result.returncode == 1
    assert "MISMATCH" in result.stdout and "Traceback" not in result.stderr


def test_compile_is_byte_identical_and_replaces_its_own_folder(tmp_path, calib):
    a, b = tmp_path / "a" / "net", tmp_path / "b" / "net"
    for out in (a, b, a):  # compiling into a's folder again replaces it
        assert cli("compile", MODEL, "--calib", calib, "-o", out).returncode == 0
    for name in ("net.h", "net.c", "net.qmodel.json", "net.float.npz"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["net"]  # no temporary folders left


def _rnn_model(path):
    onnx.save(recurrent_case("RNN"), path)
    return path


@pytest.mark.parametrize("case", ["missing_model", "not_onnx", "garbage", "rnn", "missing_calib", "nan_calib",
                                  "wrong_features", "rank2_wrong", "bad_name", "foreign_folder"])
def test_bad_input_gives_one_line_and_no_output(tmp_path, calib, case):
    out = tmp_path / "out"
    model, data, extra, expect = MODEL, calib, [], []
    if case == "missing_model":
        model, expect = tmp_path / "nope.onnx", ["nope.onnx"]
    elif case == "not_onnx":
        model = tmp_path / "model.pt"
        model.write_bytes(b"\x80\x02")
        expect = [".pt"]
    elif case == "garbage":
        model = tmp_path / "broken.onnx"
        model.write_bytes(b"this is not a protobuf")
        expect = ["broken.onnx"]
    elif case == "rnn":
        model, expect = _rnn_model(tmp_path / "rnn.onnx"), ["RNN"]
    elif case == "missing_calib":
        data, expect = tmp_path / "none.npy", ["none.npy"]
    elif case == "nan_calib":
        bad = np.zeros((4, 9, 6), np.float32)
        bad[2, 3, 1] = np.nan
        data = tmp_path / "nan.npy"
        np.save(data, bad)
        expect = ["NaN", "sequence 2", "step 3", "feature 1"]
    elif case == "wrong_features":
        data = tmp_path / "wide.npy"
        np.save(data, np.zeros((4, 9, 7), np.float32))
        expect = ["7 features", "expects 6"]
    elif case == "rank2_wrong":
        data = tmp_path / "flat.npy"
        np.save(data, np.zeros((4, 9), np.float32))
        expect = ["[N, T, F]"]
    elif case == "bad_name":
        extra, expect = ["--name", "3bad-name"], ["3bad-name"]
    elif case == "foreign_folder":
        out.mkdir()
        (out / "precious.txt").write_text("keep me")
        expect = ["not empty"]
    result = cli("compile", model, "--calib", data, "-o", out, *extra)
    assert_clean_error(result, *expect)
    if case == "foreign_folder":
        assert [p.name for p in out.iterdir()] == ["precious.txt"]
    else:
        assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_simulate_and_verify_on_a_folder_that_is_not_a_build(tmp_path):
    assert_clean_error(cli("simulate", tmp_path / "nothing", "--input", "x.npy", "--output", "y.npz"), "nothing")
    assert_clean_error(cli("verify", tmp_path), "qmodel.json")
