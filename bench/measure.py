"""Measuring helpers shared by the benches: best-of-n wall time and peak extra memory (RSS on
CPU, the CUDA allocator's peak on GPU) of one call."""

from __future__ import annotations

import threading
import time


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: str = "cpu", warmup: int = 1) -> float:
    for _ in range(warmup):  # compilation, allocator
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def peak_rss_delta_mb(fn) -> float:
    """Run fn while a thread samples RSS every ms; peak minus the RSS just before, in MB."""
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    fn()
    done.set()
    t.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return (peak[0] - base) / 2**20


def peak_cuda_delta_mb(fn) -> float:
    """Run fn; peak CUDA memory allocated during it minus what was allocated before, in MB."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
