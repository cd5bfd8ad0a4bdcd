"""Bootstrap speed and memory: 20 variants × 10,000 samples × 10,000 resamples.

Ours: every variant resampled on the same indices (paired), in chunks, means as counts @ scores.
Baseline, in the same run: scipy.stats.bootstrap (percentile, vectorised) once per variant, with
its default batching (all resamples at once). Goal (issue 4): ≤ 5 s on 2 cores. Peak memory is
numpy's allocations as tracemalloc sees them.

    python benchmarks/bench_stats.py [--variants 20] [--samples 10000] [--resamples 10000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.stats import bootstrap_means  # noqa: E402


def measure(fn):
    tracemalloc.start()
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=int, default=20)
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--resamples", type=int, default=10_000)
    args = p.parse_args()
    scores = np.random.default_rng(0).random((args.samples, args.variants))

    def ours():
        boot = bootstrap_means(scores, args.resamples, seed=0)
        np.quantile(boot, [0.025, 0.975], axis=0)

    def baseline():
        for j in range(args.variants):
            stats.bootstrap((scores[:, j],), np.mean, n_resamples=args.resamples, method="percentile",
                            random_state=np.random.default_rng(j), vectorized=True)

    ours_s, ours_mb = measure(ours)
    base_s, base_mb = measure(baseline)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"command: python benchmarks/bench_stats.py --variants {args.variants} --samples {args.samples} "
          f"--resamples {args.resamples}")
    print()
    print(f"| {args.variants} variants × {args.samples:,} samples × {args.resamples:,} resamples | seconds | peak MB | time ratio |")
    print("|---|---:|---:|---:|")
    print(f"| scipy.stats.bootstrap per variant (baseline) | {base_s:.2f} | {base_mb:,.0f} | 1.00 |")
    print(f"| harness bootstrap_means, all variants paired, chunked | {ours_s:.2f} | {ours_mb:,.0f} | {ours_s / base_s:.2f} |")
    print(f"goal ≤ 5 s: {'met' if ours_s <= 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
