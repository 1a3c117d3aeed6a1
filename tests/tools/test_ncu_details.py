"""perf/ncu_details.py on a made-up Nsight Compute details CSV: two launches of one kernel and one of
another, with sums and means worked out by hand."""
import subprocess
import sys
from pathlib import Path

PERF = Path(__file__).resolve().parents[2] / "perf"
sys.path.insert(0, str(PERF))
import ncu_details  # noqa: E402

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
          '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')
ATTEND = ("void Kokkos::Impl::cuda_parallel_launch_local_memory<ParallelFor<void unnamed>::attend_own_windows<16, 1,"
          " float>(const Cuda &, const unnamed>::Blocks<T3> &, long)::[lambda(const CudaTeamMember &) (instance 1)]>")
ROPE = ("void Kokkos::Impl::cuda_parallel_launch_local_memory<Kokkos::Impl::ParallelFor<"
        "proteus::bias_and_rope(Kokkos::Cuda const&)::{lambda(long)#1}, Kokkos::RangePolicy<>>>")


def rows(launch, kernel, metrics):
    return [f'"{launch}","1","bench","host","{kernel}","1","7","(8, 32, 1)","(64, 1, 1)","0","9.0",'
            f'"Section","{name}","{unit}","{value}"' for name, (unit, value) in metrics.items()]


def launch(i, kernel, ns, spills, threads):
    return rows(i, kernel, {"Duration": ("ns", ns), "Local Memory Spilling Requests": ("", spills),
                            "Avg. Active Threads Per Warp": ("", threads), "Block Limit SM": ("block", "32")})


def test_launches_of_one_function_are_summed_and_averaged(tmp_path):
    csv = tmp_path / "ncu.csv"
    lines = ["==PROF== Connected to process 1", HEADER]
    lines += launch(0, ATTEND, "1,500,000", "1,000", "16") + launch(1, ATTEND, "500,000", "3,000", "30")
    lines += launch(2, ROPE, "250,000", "0", "32")
    csv.write_text("\n".join(lines) + "\n")
    kernels = ncu_details.summarise(csv)
    assert list(kernels) == ["attend_own_windows", "bias_and_rope [ParallelFor]"]
    attend = kernels["attend_own_windows"]
    assert len(attend["ids"]) == 2
    assert attend["sum"]["Duration"] == 2.0  # ms
    assert attend["sum"]["Local Memory Spilling Requests"] == 4000
    assert attend["avg"]["Avg. Active Threads Per Warp"] == [16.0, 30.0]
    out = subprocess.run([sys.executable, str(PERF / "ncu_details.py"), str(csv)], capture_output=True, text=True,
                         check=True).stdout
    assert "attend_own_windows: 2 launches, ms 2, spill requests 4000, active threads/warp 23" in out
    assert "bias_and_rope [ParallelFor]: 1 launches, ms 0.25" in out
