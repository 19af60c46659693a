"""Is there an NVIDIA GPU on this machine? Asked of the driver, never of a venv's torch.

The test suite runs in several venvs (the main one carries torch's CPU build, vLLM and moshi pin their
own), so "does torch see CUDA" says more about the venv than about the machine: a GPU host must be
recognised as one from any of them, and a venv that cannot use the GPU must then fail loudly instead of
skipping. Three sources, in order: NVML (the driver's own library, loaded with ctypes), `nvidia-smi -L`,
and /proc/driver/nvidia/gpus. `CUDA_VISIBLE_DEVICES` set to empty or -1 hides every GPU, as it does for
CUDA itself.

    python -m voxgrid.gpu                  # the GPUs found, or why none (exit status 1)
    python -m voxgrid.gpu --cuda-lib-path  # NVIDIA library folders pip installed in this venv (for CTranslate2)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

NVML_LIBRARY = "libnvidia-ml.so.1"
_SMI_LINE = re.compile(r"^GPU (\d+): (.+?)(?: \(UUID: [^)]*\))?\s*$")
_PROC_MODEL = re.compile(r"^Model:\s*(.+?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class GpuReport:
    """The GPUs one source saw (names), or, when none did, what each source said."""

    names: tuple[str, ...] = ()
    source: str = ""
    checked: tuple[str, ...] = field(default_factory=tuple)

    @property
    def found(self) -> bool:
        return bool(self.names)

    @property
    def reason(self) -> str:
        """One line for a skip message or a log."""
        if self.found:
            return f"{len(self.names)} NVIDIA GPU(s) via {self.source}: {', '.join(self.names)}"
        return "no NVIDIA GPU: " + "; ".join(self.checked)


def hidden_by_env(env: Mapping[str, str]) -> bool:
    """True when CUDA_VISIBLE_DEVICES hides every device (empty, or starting with -1, as CUDA reads it)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return False
    first = value.split(",")[0].strip()
    return first == "" or first.startswith("-1")


def parse_nvidia_smi_list(text: str) -> tuple[str, ...]:
    """GPU names from `nvidia-smi -L` output ("GPU 0: NVIDIA H200 (UUID: GPU-...)"); MIG lines are skipped."""
    names = []
    for line in text.splitlines():
        match = _SMI_LINE.match(line.strip())
        if match:
            names.append(match.group(2))
    return tuple(names)


def proc_gpu_names(proc_root: Path = Path("/proc")) -> tuple[str, ...]:
    """GPU names from the kernel driver's /proc/driver/nvidia/gpus/<bus id>/information files."""
    gpus = proc_root / "driver" / "nvidia" / "gpus"
    names = []
    for info in sorted(gpus.glob("*/information")):
        match = _PROC_MODEL.search(info.read_text(errors="replace"))
        names.append(match.group(1) if match else info.parent.name)
    return tuple(names)


def nvml_gpu_names(library: str = NVML_LIBRARY) -> tuple[str, ...]:
    """GPU names from NVML; raises OSError/RuntimeError saying why NVML could not answer."""
    nvml = ctypes.CDLL(library)
    status = nvml.nvmlInit_v2()
    if status != 0:
        raise RuntimeError(f"nvmlInit failed with NVML status {status}")
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            raise RuntimeError("nvmlDeviceGetCount failed")
        names = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                raise RuntimeError(f"nvmlDeviceGetHandleByIndex({index}) failed")
            buffer = ctypes.create_string_buffer(96)
            if nvml.nvmlDeviceGetName(handle, buffer, ctypes.c_uint(len(buffer))) != 0:
                raise RuntimeError(f"nvmlDeviceGetName({index}) failed")
            names.append(buffer.value.decode(errors="replace"))
        return tuple(names)
    finally:
        nvml.nvmlShutdown()


def _smi_names() -> tuple[str, ...]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise FileNotFoundError("nvidia-smi is not on PATH")
    done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nvidia-smi -L exited {done.returncode}: {done.stderr.strip()[:200]}")
    return parse_nvidia_smi_list(done.stdout)


def detect_gpus(env: Mapping[str, str] | None = None, proc_root: Path = Path("/proc")) -> GpuReport:
    """Ask the driver (NVML, then nvidia-smi, then /proc) which NVIDIA GPUs this process may use."""
    env = os.environ if env is None else env
    if hidden_by_env(env):
        return GpuReport(checked=(f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r} hides them",))
    checked = []
    sources = (
        ("NVML", nvml_gpu_names),
        ("nvidia-smi", _smi_names),
        ("/proc/driver/nvidia", lambda: proc_gpu_names(proc_root)),
    )
    for source, names_of in sources:
        try:
            names = names_of()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            checked.append(f"{source}: {exc}")
            continue
        if names:
            return GpuReport(names=names, source=source)
        checked.append(f"{source}: no GPU listed")
    return GpuReport(checked=tuple(checked))


def cuda_library_dirs(site_packages: list[Path] | None = None) -> list[Path]:
    """Folders of the NVIDIA runtime libraries pip installed (nvidia-cublas-cu12, ...) in this environment.

    CTranslate2 loads libcublas with dlopen and, unlike torch, does not look inside site-packages: these
    folders go on LD_LIBRARY_PATH (the recipe faster-whisper documents for pip-installed CUDA libraries).
    """
    roots = site_packages if site_packages is not None else [Path(p) for p in sys.path if p.endswith("site-packages")]
    found: list[Path] = []
    for root in roots:
        for lib in sorted((root / "nvidia").glob("**/lib")):
            if lib.is_dir() and any(lib.glob("*.so*")) and lib not in found:
                found.append(lib)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuda-lib-path", action="store_true",
                        help="print this venv's pip-installed NVIDIA library folders, ':'-separated")
    args = parser.parse_args(argv)
    if args.cuda_lib_path:
        print(":".join(str(p) for p in cuda_library_dirs()))
        return 0
    report = detect_gpus()
    print(report.reason)
    return 0 if report.found else 1


if __name__ == "__main__":
    sys.exit(main())
