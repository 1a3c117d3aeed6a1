"""Wall-clock medians of a step for the Python benchmarks: the device is synchronised before and
after each timed call, so the time covers the step's device work, not only its launches."""
import time

import torch


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_ms(step, repeat, warmup=1):
    """Median over `repeat` timed calls of step(), after `warmup` untimed ones, in milliseconds."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeat):
        synchronize()
        t0 = time.perf_counter()
        step()
        synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]
