"""The microcontroller targets `verify --target` and the footprint report know: compiler flags, the
QEMU machine that emulates them, and the Debian packages that provide the tools."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .errors import ToolchainError

HOST = "host"

ARM_PACKAGES = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm")
RISCV_PACKAGES = ("gcc-riscv64-unknown-elf", "picolibc-riscv64-unknown-elf", "qemu-system-misc")


@dataclass(frozen=True)
class Target:
    name: str
    arch: str                    # "arm" or "riscv"
    cpu_flags: Tuple[str, ...]   # for compiling and linking
    machine: str                 # qemu -M
    default_opt: str
    io_budget: int               # RAM bytes the harness may use for one chunk of inputs and outputs
    trap_unaligned: bool = False  # the firmware makes unaligned halfword/word accesses fault

    @property
    def compiler(self) -> str:
        return "arm-none-eabi-gcc" if self.arch == "arm" else "riscv64-unknown-elf-gcc"

    @property
    def qemu(self) -> str:
        return "qemu-system-arm" if self.arch == "arm" else "qemu-system-riscv32"

    @property
    def packages(self) -> Tuple[str, ...]:
        return ARM_PACKAGES if self.arch == "arm" else RISCV_PACKAGES

    def tool(self, suffix: str) -> str:
        """A binutils program of this target's toolchain, e.g. tool("size")."""
        return self.compiler[:-len("gcc")] + suffix

    @property
    def cflags(self) -> Tuple[str, ...]:
        """CPU flags and the C library: newlib-nano on Arm, picolibc on RISC-V (for compiling and linking;
        the firmware links with -nostartfiles: our own startup code instead of theirs)."""
        return self.cpu_flags + ("--specs=nano.specs" if self.arch == "arm" else "--specs=picolibc.specs",)

    def qemu_command(self, elf: Path) -> List[str]:
        cmd = [self.qemu, "-M", self.machine]
        if self.arch == "riscv":
            cmd += ["-bios", "none"]
        return cmd + ["-nographic", "-monitor", "none", "-serial", "none",
                      "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]

    def describe(self, opt: str) -> str:
        return f"{self.name} {opt} (qemu {self.machine})"


_THUMB = ("-mthumb", "-mfloat-abi=soft")
TARGETS: Dict[str, Target] = {t.name: t for t in (
    # microbit is a Cortex-M0: the same ARMv6-M instruction set as the M0+
    Target("cortex-m0plus", "arm", ("-mcpu=cortex-m0plus",) + _THUMB, "microbit", "-Os", 4096),
    # QEMU does not fault on unaligned accesses on its M0; the M3 firmware enables the trap instead, and the
    # compiler may not merge byte accesses into unaligned words there (as it never does for ARMv6-M)
    Target("cortex-m3", "arm", ("-mcpu=cortex-m3", "-mno-unaligned-access") + _THUMB, "mps2-an385", "-O2", 1 << 20,
           trap_unaligned=True),
    Target("cortex-m4", "arm", ("-mcpu=cortex-m4",) + _THUMB, "mps2-an386", "-O2", 1 << 20),
    Target("cortex-m7", "arm", ("-mcpu=cortex-m7",) + _THUMB, "mps2-an500", "-O2", 1 << 20),
    Target("cortex-m33", "arm", ("-mcpu=cortex-m33",) + _THUMB, "mps2-an505", "-O2", 1 << 20),
    Target("rv32imc", "riscv", ("-march=rv32imc", "-mabi=ilp32"), "virt", "-O2", 1 << 20),
)}
TARGET_NAMES = (HOST,) + tuple(TARGETS)


def resolve_targets(names: Sequence[str]) -> List[str]:
    """Expand 'all', drop duplicates, keep the order; unknown names are an error."""
    from .errors import InputDataError
    out: List[str] = []
    for name in names:
        for n in (TARGET_NAMES if name == "all" else (name,)):
            if n not in TARGET_NAMES:
                raise InputDataError(f"unknown target {n!r}: choose from {', '.join(TARGET_NAMES)} or all")
            if n not in out:
                out.append(n)
    return out


def templates_targets_dir() -> Path:
    from .codegen import templates_dir
    return templates_dir() / "targets"


def _missing_tools(target: Target, need_qemu: bool) -> List[str]:
    missing = [p for p in (target.compiler, target.tool("size"), target.tool("nm"))
               + ((target.qemu,) if need_qemu else ()) if not shutil.which(p)]
    if target.compiler not in missing:
        # the C library: newlib-nano's libc_nano.a for the multilib of this CPU, or picolibc's specs
        probe = "libc_nano.a" if target.arch == "arm" else "picolibc.specs"
        try:
            found = subprocess.run([target.compiler, *target.cflags, f"-print-file-name={probe}"],
                                   capture_output=True, text=True).stdout.strip()
        except OSError:
            found = probe
        if not Path(found).is_absolute() or not Path(found).exists():
            missing.append("newlib" if target.arch == "arm" else "picolibc")
    return missing


def check_tools(names: Sequence[str], need_qemu: bool = True) -> None:
    """One ToolchainError naming every missing tool and the Debian packages that provide them."""
    missing, packages = [], []
    for name in names:
        if name == HOST:
            continue
        target = TARGETS[name]
        gone = _missing_tools(target, need_qemu)
        if gone:
            missing.extend(m for m in gone if m not in missing)
            wanted = target.packages if need_qemu else target.packages[:2]
            packages.extend(p for p in wanted if p not in packages)
    if missing:
        raise ToolchainError(f"{', '.join(missing)} not found: install them (Debian: apt-get install "
                             f"--no-install-recommends {' '.join(packages)})")


def tools_available(name: str, need_qemu: bool = False) -> bool:
    return name == HOST or not _missing_tools(TARGETS[name], need_qemu)
