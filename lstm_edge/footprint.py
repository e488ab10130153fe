"""What the generated C costs on a microcontroller: flash (weights, biases and parameters, tables,
code) and RAM (state per instance, worst-case stack, scratch), written by `compile` as
NAME.footprint.txt and NAME.footprint.json and shown by `inspect`.

Array sizes come from the generated C itself; code, parameter structs, sizeof(state) and the stack
are measured by the cross toolchain for one core (default cortex-m4 -O2): arm-none-eabi-size and -nm
on the object file, -fstack-usage frame sizes summed along the -fcallgraph-info call graph.
Without the toolchain those numbers are reported as unknown.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .codegen import render
from .errors import ToolchainError
from .hostbuild import STRICT_FLAGS, _run
from .quantized_model import QuantizedModel
from .targets import TARGETS, Target, check_tools

TXT_SUFFIX = ".footprint.txt"
JSON_SUFFIX = ".footprint.json"
DEFAULT_TARGET = "cortex-m4"
DEFAULT_OPT = "-O2"
FOOTPRINT_FLAGS = ("-ffunction-sections", "-fdata-sections", "-fstack-usage", "-fcallgraph-info=su")

C_TYPE_BYTES = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4, "uint32_t": 4,
                "requant_t": 8}
_CONST_ARRAY = re.compile(r"^static const (\w+) (\w+)\[(\d+)\](?: \w+)? =", re.M)
_LOCAL_ARRAY = re.compile(r"^\s+(\w+) (\w+)\[(\d+)\];$")
FLASH_KINDS = ("weights", "biases_and_parameters", "tables", "code")


def array_kind(name: str) -> str:
    """weights: int8 matrices; tables: activation look-up tables; the rest: biases, multipliers, parameters."""
    if name.endswith("_weights"):
        return "weights"
    if name.endswith("_table") or name.endswith("_table_uint16"):
        return "tables"
    return "biases_and_parameters"


def const_arrays(c_text: str) -> Dict[str, int]:
    """{name: bytes} of the file-scope const arrays of a generated NAME.c."""
    return {name: int(n) * C_TYPE_BYTES[ctype] for ctype, name, n in _CONST_ARRAY.findall(c_text)
            if ctype in C_TYPE_BYTES}


def scratch_bytes(c_text: str) -> int:
    """The largest total of local (stack) arrays declared in one function of a generated NAME.c."""
    best = current = 0
    for line in c_text.splitlines():
        if line == "{":
            current = 0
        m = _LOCAL_ARRAY.match(line)
        if m and m.group(1) in C_TYPE_BYTES:
            current += int(m.group(3)) * C_TYPE_BYTES[m.group(1)]
            best = max(best, current)
    return best


@dataclass
class Footprint:
    model: str
    target: str
    opt: str
    flash: Dict[str, Optional[int]]              # FLASH_KINDS and "total"; None: not measured
    state_bytes: int                              # sizeof(NAME_state_t) (the model's own count if not measured)
    scratch_bytes: int                            # local arrays of the generated code, part of the stack
    stack_bytes: Optional[int] = None             # worst case over the exported functions
    stack_by_function: Dict[str, int] = field(default_factory=dict)
    library_calls: List[str] = field(default_factory=list)  # callees without frame information (e.g. memset)
    static_data_bytes: Optional[int] = None       # .data + .bss of the generated code (0: no globals)
    arrays: Dict[str, int] = field(default_factory=dict)   # every const array, bytes
    toolchain: Optional[str] = None               # compiler and flags of the measurement
    unmeasured_reason: Optional[str] = None

    @property
    def measured(self) -> bool:
        return self.toolchain is not None


def _symbols(target: Target, obj: Path) -> Dict[str, tuple]:
    """{name: (type letter, size)} from nm -S."""
    out = _run([target.tool("nm"), "-S", str(obj)], f"reading symbols of {obj.name}").stdout.decode()
    symbols = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4:
            symbols[parts[3]] = (parts[2], int(parts[1], 16))
        elif len(parts) == 2 and parts[0] == "U":  # undefined: a library function (memset, __aeabi_lmul...)
            symbols[parts[1]] = ("U", 0)
    return symbols


def _sections(target: Target, obj: Path) -> Dict[str, int]:
    """{section: bytes} from size -A."""
    out = _run([target.tool("size"), "-A", str(obj)], f"reading sections of {obj.name}").stdout.decode()
    sections = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    return sections


def _stack(su_file: Path, ci_file: Path, entries: List[str]):
    """Worst-case stack of each entry function: its -fstack-usage frame plus its deepest callee chain in
    the -fcallgraph-info graph. Callees without a frame (library functions such as memset) are listed."""
    frames: Dict[str, int] = {}  # "file:line:col" -> bytes
    for line in su_file.read_text().splitlines():
        location, size, _kind = line.rsplit("\t", 2)
        frames[location.rsplit(":", 1)[0]] = int(size)
    text = ci_file.read_text()
    nodes: Dict[str, tuple] = {}  # title -> (name, frame bytes or None)
    for title, label in re.findall(r'node: \{ title: "([^"]+)" label: "([^"]+)"', text):
        parts = label.split("\\n")
        nodes[title] = (parts[0], frames.get(parts[1]) if len(parts) > 1 else None)
    calls: Dict[str, set] = {}
    for src, dst in re.findall(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"', text):
        calls.setdefault(src, set()).add(dst)
    library: set = set()

    def worst(title: str, seen: frozenset) -> int:
        name, frame = nodes.get(title, (title, None))
        if frame is None:
            library.add(name.replace("__builtin_", ""))
            return 0
        if title in seen:
            raise ToolchainError(f"recursion through {name}: the stack is unbounded")
        return frame + max((worst(c, seen | {title}) for c in calls.get(title, ())), default=0)

    return {e: worst(e, frozenset()) for e in entries if e in nodes}, sorted(library)


def compiler_version(target: Target) -> str:
    out = subprocess.run([target.compiler, "-dumpfullversion"], capture_output=True, text=True).stdout.strip()
    return f"{target.compiler} {out}"


def measure(model: QuantizedModel, target_name: str = DEFAULT_TARGET, opt: str = DEFAULT_OPT,
            files: Optional[Dict[str, str]] = None) -> Footprint:
    """The footprint of the C that `render(model)` produces (or of `files`), measured for one core when
    its toolchain is installed."""
    files = files or render(model)
    c_text = files[f"{model.name}.c"]
    arrays = const_arrays(c_text)
    flash: Dict[str, Optional[int]] = {k: 0 for k in FLASH_KINDS}
    for name, size in arrays.items():
        flash[array_kind(name)] += size
    flash["code"] = None
    fp = Footprint(model=model.name, target=target_name, opt=opt, flash=flash, state_bytes=model.state_bytes,
                   scratch_bytes=scratch_bytes(c_text), arrays=arrays)
    target = TARGETS[target_name]
    try:
        check_tools([target_name], need_qemu=False)
    except ToolchainError as exc:
        fp.unmeasured_reason = str(exc)
        flash["biases_and_parameters"] = None  # the parameter structs' sizes depend on the ABI
        flash["total"] = None
        return fp
    with tempfile.TemporaryDirectory(prefix="lstm-edge-footprint.") as work:
        work_dir = Path(work)
        for fname, text in files.items():
            (work_dir / fname).write_text(text)
        flags = [*target.cflags, *STRICT_FLAGS, opt, *FOOTPRINT_FLAGS]
        obj = work_dir / f"{model.name}.o"
        _run([target.compiler, *flags, "-c", str(work_dir / f"{model.name}.c"), "-o", str(obj)],
             f"compiling {model.name}.c for {target.name} {opt}")
        symbols, sections = _symbols(target, obj), _sections(target, obj)
        probe = work_dir / "state_size.c"
        probe.write_text(f'#include "{model.name}.h"\nchar lstm_edge_state_size[sizeof({model.name}_state_t)];\n')
        _run([target.compiler, *target.cflags, "-std=c99", "-c", str(probe), "-o", str(work_dir / "state_size.o")],
             f"measuring sizeof({model.name}_state_t)")
        fp.state_bytes = _symbols(target, work_dir / "state_size.o")["lstm_edge_state_size"][1]
        entries = [s for s, (kind, _) in symbols.items() if kind == "T"]
        fp.stack_by_function, called = _stack(work_dir / f"{model.name}.su", work_dir / f"{model.name}.ci", entries)
        # helpers the compiler calls on its own (64-bit multiply on ARMv6-M...) are not in the call graph
        fp.library_calls = sorted(set(called) | {name for name, (kind, _) in symbols.items() if kind == "U"})
        fp.toolchain = f"{compiler_version(target)} {' '.join(flags)}"
    data = {name: size for name, (kind, size) in symbols.items() if kind in "rR"}
    for kind in FLASH_KINDS[:3]:
        flash[kind] = sum(size for name, size in data.items() if array_kind(name) == kind)
    flash["code"] = sum(size for name, size in sections.items() if name == ".text" or name.startswith(".text."))
    flash["total"] = sum(flash[k] for k in FLASH_KINDS)
    fp.arrays = {name: data[name] for name in arrays if name in data}
    fp.static_data_bytes = sum(size for name, size in sections.items()
                               if name.split(".")[1] in ("data", "bss") and size)
    fp.stack_bytes = max(fp.stack_by_function.values(), default=0)
    return fp


# ------------------------------------------------------------------------------------- files

def to_json(fp: Footprint) -> str:
    return json.dumps({"format": "lstm-edge footprint", "format_version": 1, **asdict(fp)}, indent=1) + "\n"


def from_json(text: str) -> Footprint:
    d = json.loads(text)
    names = Footprint.__dataclass_fields__
    return Footprint(**{k: v for k, v in d.items() if k in names})


def _b(v: Optional[int]) -> str:
    return "n/a" if v is None else f"{v:,} B"


def format_footprint(fp: Footprint) -> str:
    how = (f"measured for {fp.target} {fp.opt}: {fp.toolchain}" if fp.measured
           else f"not measured for {fp.target} {fp.opt}: {fp.unmeasured_reason}")
    lines = [f"lstm-edge footprint of {fp.model} ({how})",
             f"flash {_b(fp.flash['total'])}",
             f"  weights                {_b(fp.flash['weights']):>12}  int8 matrices",
             f"  biases and parameters  {_b(fp.flash['biases_and_parameters']):>12}  int32 biases, multipliers, "
             f"layer parameters",
             f"  tables                 {_b(fp.flash['tables']):>12}  sigmoid/tanh look-up tables",
             f"  code                   {_b(fp.flash['code']):>12}  .text of {fp.model}.c",
             "RAM",
             f"  state per instance     {_b(fp.state_bytes):>12}  sizeof({fp.model}_state_t)"]
    if fp.stack_bytes is not None:
        per_fn = ", ".join(f"{k} {v:,} B" for k, v in sorted(fp.stack_by_function.items()))
        extra = f"; plus library calls: {', '.join(fp.library_calls)}" if fp.library_calls else ""
        lines.append(f"  worst-case stack       {_b(fp.stack_bytes):>12}  {per_fn} (-fstack-usage){extra}")
    else:
        lines.append(f"  worst-case stack       {'n/a':>12}")
    lines.append(f"    of which scratch     {_b(fp.scratch_bytes):>12}  local arrays of the generated code")
    lines.append(f"  static data            {_b(fp.static_data_bytes):>12}  .data + .bss (no globals)")
    return "\n".join(lines)


def footprint_files(fp: Footprint) -> Dict[str, bytes]:
    return {f"{fp.model}{TXT_SUFFIX}": (format_footprint(fp) + "\n").encode(),
            f"{fp.model}{JSON_SUFFIX}": to_json(fp).encode()}


def load_footprint(out_dir) -> Optional[Footprint]:
    found = sorted(Path(out_dir).glob(f"*{JSON_SUFFIX}"))
    return from_json(found[0].read_text()) if len(found) == 1 else None


def summary_line(fp: Footprint) -> str:
    f = fp.flash
    code = f"code {_b(f['code'])}" if f["code"] is not None else "code n/a"
    ram = f"state {_b(fp.state_bytes)} per instance, stack {_b(fp.stack_bytes)}"
    return (f"footprint ({fp.target} {fp.opt}): flash {_b(f['total'])} (weights {_b(f['weights'])}, "
            f"biases/parameters {_b(f['biases_and_parameters'])}, tables {_b(f['tables'])}, {code}); RAM: {ram}")
