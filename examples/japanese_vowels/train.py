"""Train the Japanese Vowels speaker classifier and export it to ONNX (needs torch).

    python examples/japanese_vowels/train.py [--data PATH] [--out DIR] [--cell gru] [--bidirectional]

Model: nn.LSTM(12, 32, batch_first=True) -> output of the last time step -> nn.Linear(32, 9),
emitting logits (no softmax). Writes next to this script (or to --out):

    model.onnx   the trained model, input x [batch, 29, 12] float32 (batch axis dynamic)
    calib.npy    x_train, float32 [270, 29, 12]: calibration data for the quantizer
    test.npz     x = x_test float32 [370, 29, 12], y = y_test int64 labels 0..8

and prints the float test accuracy of PyTorch and onnxruntime. --cell gru / --bidirectional
train the variants of VariantClassifier instead (model_gru.onnx / model_bilstm.onnx only).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[2] / "shared" / "data" / "japanese_vowels.npz"
SEED = 0
EPOCHS = 30
BATCH = 16
LR = 5e-3


class VowelClassifier(nn.Module):
    def __init__(self, features: int = 12, hidden: int = 32, classes: int = 9):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):  # x [N, T, 12] -> logits [N, 9]
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


# VowelClassifier above stays line for line as it was: the exporter writes the source lines of
# forward() into model.onnx, so moving them would change the bytes of the default model.
class VariantClassifier(nn.Module):
    """The other models, same data and training loop (only the ONNX file is written):

    --cell gru         nn.GRU(12, 32) -> last step -> nn.Linear(32, 9)          model_gru.onnx
    --bidirectional    nn.LSTM(12, 16, bidirectional=True) -> out[:, -1] (forward h_T and the
                       backward output at T, concatenated: 32 wide) -> nn.Linear(32, 9)
                                                                                model_bilstm.onnx
    """

    def __init__(self, features: int = 12, hidden: int = 32, classes: int = 9, cell: str = "gru",
                 bidirectional: bool = False):
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(features, hidden, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, x):  # x [N, T, 12] -> logits [N, 9]
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def load_data(path: Path):
    with np.load(path) as d:
        x_train = np.asarray(d["x_train"], dtype=np.float32)
        x_test = np.asarray(d["x_test"], dtype=np.float32)
        y_train = np.asarray(d["y_train"]).astype(np.int64)
        y_test = np.asarray(d["y_test"]).astype(np.int64)
    return x_train, y_train, x_test, y_test


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def train(x_train, y_train, x_test, y_test, seed: int = SEED, **variant) -> nn.Module:
    """The default model without `variant`, else VariantClassifier(**variant)."""
    torch.manual_seed(seed)
    model = VariantClassifier(**variant) if variant else VowelClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(xt), generator=gen).split(BATCH):
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch % 10 == 0 or epoch == EPOCHS:
            model.eval()
            with torch.no_grad():
                acc = accuracy(model(torch.from_numpy(x_test)).numpy(), y_test)
            print(f"epoch {epoch:3d}  train loss {total / len(xt):.4f}  test acc {acc:.4f}")
    return model.eval()


def export(model: nn.Module, example: np.ndarray, path: Path) -> None:
    # The dynamo exporter (torch's default). external_data=False: one self-contained file.
    # Only the batch axis is dynamic: torch.export fixes the LSTM's time axis (29 steps).
    torch.onnx.export(model, (torch.from_numpy(example),), str(path), dynamo=True,
                      external_data=False, input_names=["x"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a Japanese Vowels classifier and export it.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="japanese_vowels.npz")
    parser.add_argument("--out", type=Path, default=HERE, help="output directory")
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm", help="recurrent cell (default lstm)")
    parser.add_argument("--bidirectional", action="store_true", help="bidirectional recurrent layer")
    parser.add_argument("--hidden", type=int, default=None,
                        help="units per direction (default 32, 16 when bidirectional)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    args = parser.parse_args()
    hidden = args.hidden or (16 if args.bidirectional else 32)
    name = ("bi" if args.bidirectional else "") + args.cell
    default = name == "lstm" and hidden == 32
    variant = {} if default else dict(hidden=hidden, cell=args.cell, bidirectional=args.bidirectional)
    filename = "model.onnx" if name == "lstm" else f"model_{name}.onnx"
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test = load_data(args.data)
    start = time.time()
    model = train(x_train, y_train, x_test, y_test, seed=args.seed, **variant)
    print(f"trained in {time.time() - start:.0f} s")
    with torch.no_grad():
        torch_acc = accuracy(model(torch.from_numpy(x_test)).numpy(), y_test)
    print(f"float test accuracy (PyTorch): {torch_acc:.4f} ({round(torch_acc * len(y_test))}/{len(y_test)})")

    model_path = args.out / filename
    export(model, x_train[:4], model_path)
    if filename == "model.onnx":
        np.save(args.out / "calib.npy", x_train)
        np.savez_compressed(args.out / "test.npz", x=x_test, y=y_test)
        print(f"wrote {model_path}, calib.npy, test.npz")
    else:
        print(f"wrote {model_path}")

    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ort_acc = accuracy(sess.run(None, {"x": x_test})[0], y_test)
    print(f"float test accuracy (onnxruntime, {filename}): {ort_acc:.4f}")
    if ort_acc != torch_acc:
        raise SystemExit("onnxruntime and PyTorch disagree on the exported model")


if __name__ == "__main__":
    main()
