"""perf/roofline.py on a made-up Nsight Compute CSV whose figures are worked out by hand."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

PERF = Path(__file__).resolve().parents[2] / "perf"
sys.path.insert(0, str(PERF))
import roofline  # noqa: E402

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
          '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')
PEAKS = {"device": "made up", "fp32_tflops": 50.0, "tf32_tflops": 400.0, "bf16_tflops": 800.0, "hbm_tbs": 4.0}


def rows(launch, kernel, metrics):
    return [f'"{launch}","1","bench","host","{kernel}","1","7","(256, 1, 1)","(64, 1, 1)","0","9.0",'
            f'"Command line profiler metrics","{name}","{unit}","{value}"' for name, (unit, value) in metrics.items()]


def kernel(launch, name, time, read, write, ffma="0", fadd="0", fmul="0"):
    """One launch's rows: time, read and write as (unit, value); instruction counts as values."""
    prefix = "sm__sass_thread_inst_executed_op_"
    return rows(launch, name, {
        "gpu__time_duration.sum": time, "dram__bytes_read.sum": read, "dram__bytes_write.sum": write,
        prefix + "ffma_pred_on.sum": ("inst", ffma), prefix + "fadd_pred_on.sum": ("inst", fadd),
        prefix + "fmul_pred_on.sum": ("inst", fmul)})


def gemm(launch):  # 1 ms, 25e9 FFMA = 50 GFLOP, 100 MB: 500 FLOP/byte, 50 TFLOP/s (the FP32 roof)
    return kernel(launch, "sm90_xmma_gemm_f32f32_f32f32_f32_nn_n_tilesize128x128x8_kernel", ("nsecond", "1,000,000"),
                  ("Mbyte", "60"), ("Mbyte", "40"), ffma="25e9")


def stream(launch):  # 0.8 ms, 1e9 FADD + 1e9 FMUL = 2 GFLOP, 1.6 GB: 1.25 FLOP/byte, 2 TB/s (50% of HBM)
    return kernel(launch, "void Kokkos::Impl::cuda_parallel_launch_local_memory<Kokkos::Impl::ParallelFor<"
                          "proteus::row_norms(Kokkos::Cuda const&)::{lambda(long)#1}, Kokkos::RangePolicy<>>>",
                  ("usecond", "800"), ("byte", "1200000000"), ("Gbyte", "0.4"), fadd="1e9", fmul="1e9")


def serial(launch):  # 0.1 ms for 1 MB: 10 GB/s, 0.25% of HBM: bound by neither roof
    return kernel(launch, "void Kokkos::Impl::cuda_parallel_launch_local_memory<Kokkos::Impl::ParallelScan<"
                          "proteus::pack_rows(Kokkos::Cuda const&)::{lambda(long, long&, bool)#1}>>",
                  ("usecond", "100"), ("byte", "500000"), ("byte", "500000"))


def csv_lines(*launches):
    return ["==PROF== Connected to process 1\n", HEADER + "\n"] + [line + "\n" for launch in launches for line in launch]


def test_work_bytes_and_bounds_per_kernel():
    table = roofline.summarise(roofline.read_launches(csv_lines(gemm(1), stream(2), stream(3))), PEAKS, calls=2)
    by_name = {r["kernel"]: r for r in table}
    g = by_name["cuBLAS gemm f32 nn 128x128x8"]  # cuBLAS names shortened
    s = by_name["row_norms [ParallelFor]"]
    assert [r["kernel"] for r in table] == [s["kernel"], g["kernel"]]  # longest first
    assert g["launches"] == 0.5 and s["launches"] == 1.0
    assert g["seconds"] == pytest.approx(0.5e-3) and s["seconds"] == pytest.approx(0.8e-3)
    assert g["flop"] == pytest.approx(25e9) and s["flop"] == pytest.approx(2e9)
    assert g["bytes"] == pytest.approx(50e6) and s["bytes"] == pytest.approx(1.6e9)
    assert g["flops"] == pytest.approx(50e12) and g["intensity"] == pytest.approx(500)
    assert g["bound"] == "compute" and g["of_roof"] == pytest.approx(1.0)
    assert s["bandwidth"] == pytest.approx(2e12) and s["intensity"] == pytest.approx(1.25)
    assert s["bound"] == "memory" and s["of_roof"] == pytest.approx(0.5)


def test_a_kernel_far_below_both_roofs_is_latency_bound():
    (r,) = roofline.summarise(roofline.read_launches(csv_lines(serial(1))), PEAKS)
    assert r["kernel"] == "pack_rows [ParallelScan]" and r["bound"] == "latency"
    assert r["of_roof"] == pytest.approx(1e10 / 4e12)


def test_excluded_groups_leave_the_table():
    launches = roofline.read_launches(csv_lines(gemm(1), stream(2)))
    table = roofline.summarise(launches, PEAKS, exclude=[r"^row_norms\b"])
    assert [r["kernel"] for r in table] == ["cuBLAS gemm f32 nn 128x128x8"]


def test_a_missing_metric_or_unit_is_an_error():
    incomplete = [line for line in gemm(1) if "fmul" not in line]
    with pytest.raises(ValueError, match="no sm__sass_thread_inst_executed_op_fmul_pred_on.sum"):
        roofline.summarise(roofline.read_launches(csv_lines(incomplete)), PEAKS)
    odd_unit = [line.replace('"Mbyte"', '"furlong"') for line in gemm(1)]
    with pytest.raises(ValueError, match="unknown unit 'furlong'"):
        roofline.read_launches(csv_lines(odd_unit))


def test_command_line_writes_table_and_png(tmp_path):
    (tmp_path / "ncu.csv").write_text("".join(csv_lines(gemm(1), stream(2))))
    (tmp_path / "peaks.json").write_text(json.dumps(PEAKS))
    out = subprocess.run([sys.executable, str(PERF / "roofline.py"), str(tmp_path / "ncu.csv"), "--peaks",
                          str(tmp_path / "peaks.json"), "--markdown", str(tmp_path / "t.md"), "--png",
                          str(tmp_path / "r.png")], capture_output=True, text=True, check=True).stdout
    assert "| row_norms [ParallelFor] | 1 | 0.800 | 44.4% | 2.00 | 1.600 | 2.50 | 2.00 | 1.2 | memory | 50% |" in out
    assert (tmp_path / "t.md").read_text() == out
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, str(PERF / "roofline.py"), str(tmp_path / "none.csv"), "--peaks",
                          str(tmp_path / "peaks.json")], capture_output=True, text=True)
    assert bad.returncode != 0 and "none.csv" in bad.stderr
