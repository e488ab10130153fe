"""The small architecture language that tells the PyTorch importer what a state_dict's tensors are.

    lstm(input=12, hidden=32, layers=2, batch_first=true) -> last -> linear(32, 9) -> relu -> linear(9, 3)
    gru(5, 8, bidirectional=true) -> final -> linear(16, 4) -> softmax

docs/pytorch-arch.md is the user's description. Grammar of the one-line form:

    arch  := stage ("->" stage)*
    stage := WORD [ "(" [ arg ("," arg)* ] ")" ]
    arg   := [ WORD "=" ] value
    value := NUMBER | true | false | WORD | "quoted" | 'quoted'

The same stages can come from a JSON or YAML file (a list of stages, each a string or a one-key
mapping {kind: arguments}). Parsing only checks the language: stage kinds, keys, value types.
Matching the stages with the tensors is torch_importer's job.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..errors import ModelFormatError, UnsupportedModelError

DOC = "see docs/pytorch-arch.md"

# kind -> (positional argument names, allowed keys)
RECURRENT_KEYS = ("input", "hidden", "layers", "bias", "batch_first", "dropout", "name", "bidirectional")
STAGES: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    "lstm": (("input", "hidden"), RECURRENT_KEYS + ("proj_size",)),
    "gru": (("input", "hidden"), RECURRENT_KEYS),
    "linear": (("in", "out"), ("in", "out", "bias", "name")),
    "last": ((), ()),  # out[:, -1]: the output sequence at t = T-1
    "final": ((), ()),  # h_n: each direction's final state (torch.cat((h_n[-2], h_n[-1]), 1) if bidirectional)
    "relu": ((), ()),
    "tanh": ((), ()),
    "sigmoid": ((), ()),
    "softmax": (("dim",), ("dim",)),
    "log_softmax": (("dim",), ("dim",)),
    "dropout": (("p",), ("p", "inplace")),
    "identity": ((), ()),
}
RECURRENT_STAGES = ("lstm", "gru")
KIND_ALIASES = {"logsoftmax": "log_softmax", "last_step": "last", "dense": "linear", "h_n": "final", "hn": "final",
                "final_state": "final"}
KEY_ALIASES = {"input_size": "input", "hidden_size": "hidden", "num_layers": "layers",
               "in_features": "in", "out_features": "out"}
NOT_YET = {
    "rnn": "simple RNN layers (nn.RNN) are not supported yet",
}
INT_KEYS = ("input", "hidden", "layers", "in", "out", "proj_size", "dim")
BOOL_KEYS = ("bias", "batch_first", "bidirectional", "inplace")
FLOAT_KEYS = ("dropout", "p")

_TOKEN = re.compile(r"""\s*(?:(?P<arrow>->)|(?P<punct>[(),=])|(?P<number>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)
                        |(?P<word>[A-Za-z_][A-Za-z0-9_.]*)|(?P<string>"[^"]*"|'[^']*'))""", re.VERBOSE)


@dataclass
class Stage:
    """One stage of the pipeline: its kind, its arguments by (canonical) key, and how it was written."""

    kind: str
    args: Dict[str, object] = field(default_factory=dict)
    position: int = 0  # 1-based

    @property
    def label(self) -> str:
        shown = ", ".join(f"{k}={_show(v)}" for k, v in self.args.items())
        return f"stage {self.position} {self.kind}({shown})" if shown else f"stage {self.position} {self.kind}"


def _show(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- the one-line form ----------------------------------------------------------------------

def _tokens(text: str) -> List[Tuple[str, str, int]]:
    """(kind, text, column) triples; one error naming the column for a character we do not know."""
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            column = pos + len(text[pos:]) - len(text[pos:].lstrip()) + 1
            raise ModelFormatError(f"arch: unexpected character {text[column - 1]!r} at column {column}; {DOC}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()
    return tokens


def _value(kind: str, text: str):
    if kind == "number":
        return float(text) if any(c in text for c in ".eE") else int(text)
    if kind == "string":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_arch_string(text: str) -> List[Stage]:
    tokens = _tokens(text)
    if not tokens:
        raise ModelFormatError(f"arch: empty architecture; {DOC}")
    stages, k = [], 0

    def expect(kinds, what):
        nonlocal k
        if k >= len(tokens):
            raise ModelFormatError(f"arch: expected {what} at the end; {DOC}")
        kind, tok, col = tokens[k]
        if kind not in kinds and tok not in kinds:
            raise ModelFormatError(f"arch: expected {what} at column {col}, found {tok!r}; {DOC}")
        k += 1
        return kind, tok, col

    while True:
        _, name, col = expect(("word",), "a stage name (lstm, gru, last, final, linear, relu, ...)")
        positional, keywords = [], {}
        if k < len(tokens) and tokens[k][1] == "(":
            k += 1
            if tokens[k:k + 1] and tokens[k][1] == ")":
                k += 1
            else:
                while True:
                    if k + 1 < len(tokens) and tokens[k][0] == "word" and tokens[k + 1][1] == "=":
                        key = tokens[k][1]
                        k += 2
                        vkind, vtext, vcol = expect(("number", "word", "string"), f"a value for '{key}'")
                        if key in keywords:
                            raise ModelFormatError(f"arch: '{key}' given twice in {name}(...) at column {vcol}")
                        keywords[key] = _value(vkind, vtext)
                    else:
                        vkind, vtext, vcol = expect(("number", "word", "string"), "an argument")
                        if keywords:
                            raise ModelFormatError(f"arch: positional argument {vtext!r} after keyword "
                                                   f"arguments in {name}(...) at column {vcol}")
                        positional.append(_value(vkind, vtext))
                    _, sep, _ = expect((",", ")"), "',' or ')'")
                    if sep == ")":
                        break
        stages.append(make_stage(name, positional, keywords, len(stages) + 1))
        if k == len(tokens):
            return stages
        expect(("arrow",), "'->' between stages")


# --- stages from any form -------------------------------------------------------------------

def make_stage(name: str, positional: Sequence, keywords: Dict[str, object], position: int) -> Stage:
    kind = KIND_ALIASES.get(str(name).lower(), str(name).lower())
    where = f"arch stage {position} '{name}'"
    if kind in NOT_YET:
        raise UnsupportedModelError(f"{where}: {NOT_YET[kind]}; only lstm and gru stages")
    if kind not in STAGES:
        raise ModelFormatError(f"{where}: unknown stage; known: {', '.join(STAGES)}; {DOC}")
    names, allowed = STAGES[kind]
    if len(positional) > len(names):
        raise ModelFormatError(f"{where}: takes at most {len(names)} positional argument(s) "
                               f"({', '.join(names) or 'none'}), got {len(positional)}")
    args: Dict[str, object] = dict(zip(names, positional))
    for raw_key, value in keywords.items():
        key = KEY_ALIASES.get(str(raw_key), str(raw_key))
        if key not in allowed:
            choices = ", ".join(allowed) if allowed else "no arguments"
            raise ModelFormatError(f"{where}: unknown key '{raw_key}'; it takes {choices}")
        if key in args:
            raise ModelFormatError(f"{where}: '{key}' given twice")
        args[key] = value
    for key, value in args.items():
        args[key] = _typed(where, key, value)
    stage = Stage(kind, args, position)
    if args.get("proj_size"):
        raise UnsupportedModelError(f"arch {stage.label}: LSTMs with proj_size are not supported yet")
    return stage


def _typed(where: str, key: str, value):
    if key in INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelFormatError(f"{where}: {key}={_show(value)} is not an integer")
        if key not in ("dim", "proj_size") and value < 1:
            raise ModelFormatError(f"{where}: {key}={value} must be at least 1")
        return value
    if key in BOOL_KEYS:
        if not isinstance(value, bool):
            raise ModelFormatError(f"{where}: {key}={_show(value)} must be true or false")
        return value
    if key in FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ModelFormatError(f"{where}: {key}={_show(value)} must be a number from 0 to 1")
        return float(value)
    if not isinstance(value, str) or not value:  # name
        raise ModelFormatError(f"{where}: {key}={_show(value)} must be a module name such as encoder.lstm")
    return value


def stages_from_structure(value, what: str) -> List[Stage]:
    """Stages from parsed JSON/YAML: {"arch": "..."}, {"layers": [...]}, or a list of stages."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"arch", "layers"})
        if unknown or len(value) != 1:
            raise ModelFormatError(f"{what}: expected one key, 'arch' (the one-line form) or 'layers' (a list of "
                                   f"stages), found {', '.join(map(str, value)) or 'none'}; {DOC}")
        value = next(iter(value.values()))
    if isinstance(value, str):
        return parse_arch_string(value)
    if not isinstance(value, list) or not value:
        raise ModelFormatError(f"{what}: expected a non-empty list of stages; {DOC}")
    stages = []
    for k, item in enumerate(value, start=1):
        if isinstance(item, str):
            parsed = parse_arch_string(item)
            if len(parsed) != 1:
                raise ModelFormatError(f"{what}: item {k} {item!r} holds {len(parsed)} stages; write one per item")
            stages.append(make_stage(parsed[0].kind, [], parsed[0].args, k))
        elif isinstance(item, dict) and len(item) == 1:
            name, args = next(iter(item.items()))
            if args is None:
                stages.append(make_stage(name, [], {}, k))
            elif isinstance(args, dict):
                stages.append(make_stage(name, [], args, k))
            elif isinstance(args, list):
                stages.append(make_stage(name, args, {}, k))
            else:
                stages.append(make_stage(name, [args], {}, k))
        else:
            raise ModelFormatError(f"{what}: item {k} must be a stage name or a one-key mapping "
                                   f"{{kind: arguments}}, found {item!r}")
    return stages


def load_arch(arch) -> List[Stage]:
    """Stages from what the user gave: the one-line string, a .json/.yaml/.yml file (or a file
    holding the one-line form), or an already parsed list/dict (library use)."""
    if isinstance(arch, (list, dict)):
        return stages_from_structure(arch, "arch")
    if not isinstance(arch, (str, Path)):
        raise ModelFormatError(f"arch must be a string, a file name or a list of stages, not {type(arch).__name__}")
    text = str(arch)
    path = Path(text)
    structured = path.suffix.lower() in (".json", ".yaml", ".yml")
    looks_like_file = bool(path.suffix) or "/" in text or "\\" in text  # no stage name has '.' or '/'
    if "(" not in text and "->" not in text and (looks_like_file or path.is_file()):
        if not path.is_file():
            raise ModelFormatError(f"arch file '{path}' not found")
        content = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            try:
                return stages_from_structure(json.loads(content), f"arch file '{path}'")
            except json.JSONDecodeError as exc:
                raise ModelFormatError(f"arch file '{path}' is not valid JSON ({exc})") from None
        if structured:
            return stages_from_structure(_yaml(path, content), f"arch file '{path}'")
        return parse_arch_string(content)
    return parse_arch_string(text)


def _yaml(path: Path, content: str):
    try:
        import yaml
    except ImportError:
        raise ModelFormatError(f"arch file '{path}': reading YAML needs PyYAML (pip install pyyaml); or write "
                               f"the same content as JSON") from None
    try:
        return yaml.safe_load(content)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFormatError(f"arch file '{path}' is not valid YAML ({first})") from None
