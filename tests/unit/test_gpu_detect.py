"""GPU detection asks the driver, not torch: the parsers, CUDA_VISIBLE_DEVICES, and a machine without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from voxgrid.gpu import GpuReport, cuda_library_dirs, detect_gpus, hidden_by_env, parse_nvidia_smi_list, proc_gpu_names

SMI_OUTPUT = """GPU 0: NVIDIA H200 (UUID: GPU-6f0c2e1a-1111-2222-3333-444455556666)
  MIG 3g.71gb     Device  0: (UUID: MIG-0a1b2c3d-aaaa-bbbb-cccc-ddddeeeeffff)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-0f0f0f0f-1111-2222-3333-444455556666)
"""

PROC_INFO = """Model: \t\t NVIDIA H100 80GB HBM3
IRQ:   \t\t 255
GPU UUID: \t GPU-12345678-1234-1234-1234-123456789abc
Bus Location: \t 0000:19:00.0
"""


def test_nvidia_smi_list_gives_one_name_per_gpu_and_skips_mig_lines() -> None:
    assert parse_nvidia_smi_list(SMI_OUTPUT) == ("NVIDIA H200", "NVIDIA A100-SXM4-80GB")
    assert parse_nvidia_smi_list("No devices were found\n") == ()


def test_proc_driver_information_files_name_each_gpu(tmp_path: Path) -> None:
    gpus = tmp_path / "driver" / "nvidia" / "gpus"
    for bus, text in (("0000:19:00.0", PROC_INFO), ("0000:3b:00.0", "IRQ: 12\n")):
        (gpus / bus).mkdir(parents=True)
        (gpus / bus / "information").write_text(text)
    # A file without a Model line still counts as a GPU, named by its bus id.
    assert proc_gpu_names(tmp_path) == ("NVIDIA H100 80GB HBM3", "0000:3b:00.0")
    assert proc_gpu_names(tmp_path / "nowhere") == ()


@pytest.mark.parametrize(("value", "hidden"), [
    (None, False), ("", True), ("-1", True), ("-1,0", True), ("0", False), ("1,0", False), ("GPU-abc", False),
])
def test_cuda_visible_devices_hides_gpus_the_way_cuda_reads_it(value: str | None, hidden: bool) -> None:
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert hidden_by_env(env) is hidden


def test_hidden_gpus_are_not_detected_and_the_reason_says_why() -> None:
    report = detect_gpus({"CUDA_VISIBLE_DEVICES": "-1"})
    assert not report.found and "CUDA_VISIBLE_DEVICES='-1' hides them" in report.reason


def test_without_a_driver_every_source_is_reported(tmp_path: Path) -> None:
    report = detect_gpus({}, proc_root=tmp_path)
    if report.found:
        pytest.skip(f"this machine has a GPU: {report.reason}")
    assert [c.split(":")[0] for c in report.checked] == ["NVML", "nvidia-smi", "/proc/driver/nvidia"]
    assert report.reason.startswith("no NVIDIA GPU: NVML: ")


def test_found_report_names_its_source() -> None:
    report = GpuReport(names=("NVIDIA H200",), source="NVML")
    assert report.found and report.reason == "1 NVIDIA GPU(s) via NVML: NVIDIA H200"


def test_cuda_library_dirs_are_the_pip_nvidia_lib_folders_with_libraries(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for package, library in (("cublas", "libcublas.so.12"), ("cudnn", "libcudnn.so.9"), ("cu13", "libcublas.so.13")):
        (site / "nvidia" / package / "lib").mkdir(parents=True)
        (site / "nvidia" / package / "lib" / library).write_bytes(b"")
    (site / "nvidia" / "headers_only" / "lib").mkdir(parents=True)
    dirs = cuda_library_dirs([site])
    assert [d.parent.name for d in dirs] == ["cu13", "cublas", "cudnn"]


def test_command_line_exits_1_with_the_reason_where_no_gpu_is_visible() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "voxgrid.gpu"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 1 and done.stdout.startswith("no NVIDIA GPU:")
