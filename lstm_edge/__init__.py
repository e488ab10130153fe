"""lstm-edge: compile trained LSTM models to integer-only C, with a bit-exact simulator.

Library API (the CLI is a thin layer over it):

    from lstm_edge import load_model, calibrate_model, quantize, write_c, simulate
    model = load_model("model.onnx")                       # float IR
    ranges = calibrate_model(model, "calib.npy")           # tensor ranges
    qmodel = quantize(model, ranges, name="kws")           # all integers, computed once
    write_c(qmodel, "build/kws")                           # kws.h, kws.c, kws.qmodel.json
    y_q = simulate(qmodel, qmodel.input_q.quantize(x))     # bit-exact with the C
"""

__version__ = "0.1.0"

_API = ("calibrate_model", "load_model", "load_quantized", "quantize", "simulate", "write_c")
__all__ = list(_API) + ["__version__"]


def __getattr__(name):
    # Lazy: `import lstm_edge` stays cheap; onnx is imported only when a model is loaded.
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'lstm_edge' has no attribute {name!r}")
