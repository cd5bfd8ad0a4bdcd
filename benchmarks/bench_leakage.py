"""Leakage check speed and memory: 1,000,000 training × 100,000 evaluation documents of ~50 words.

Ours: harness.leakage.find_leaks, all three methods (exact, 13-gram overlap, near duplicates by exact
Jaccard of word 3-shingles), boilerplate excluded. Baseline, in the same run: a plain datasketch
MinHashLSH (threshold 0.5, 128 permutations, MinHash.bulk) over the same 3-shingles, on a subset
(it would take too long on all of it), with ours timed on the same subset for a like-for-like rate.
Planted leaks (exact copies with case and punctuation changed, copies with 3 words replaced, a
15-word passage copied into a new document) are counted as found or missed by each.

Goal (issue 6): ≤ 2 minutes and ≤ 8 GB on 2 cores for the full size. Memory is the process's peak
resident set (generated documents included), sampled every 50 ms.

    python benchmarks/bench_leakage.py [--train 1000000] [--eval 100000] [--baseline-train 100000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.leakage import Settings, find_leaks  # noqa: E402

PLANTED = 500  # of each kind


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled from /proc)."""

    def __enter__(self):
        self.peak, self._stop = _rss(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def make_corpus(n_train: int, n_eval: int, seed: int = 0):
    """Documents of 40-60 words drawn from a Zipf-like vocabulary of 50,000 words, and an evaluation
    set whose first 3 × PLANTED documents are leaks of the first training documents."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)], dtype=object)
    p = 1 / np.arange(1, len(vocab) + 1) ** 1.05
    p /= p.sum()

    def docs(n):
        lens = rng.integers(40, 61, n)
        words = vocab[rng.choice(len(vocab), int(lens.sum()), p=p)]
        offs = np.concatenate([[0], np.cumsum(lens)])
        return [words[offs[i]:offs[i + 1]].tolist() for i in range(n)]

    train_words = docs(n_train)
    eval_words = docs(n_eval)
    sources = rng.choice(min(n_train, 50_000), 3 * PLANTED, replace=False)  # inside every subset
    for i, src in enumerate(sources[:PLANTED]):  # exact, up to case and punctuation
        w = list(train_words[src])
        w[0] = w[0].upper()
        w[-1] += "."
        eval_words[i] = w
    for i, src in enumerate(sources[PLANTED:2 * PLANTED], start=PLANTED):  # three words replaced
        w = list(train_words[src])
        for j in rng.choice(len(w), 3, replace=False):
            w[j] = f"x{rng.integers(1_000_000)}"
        eval_words[i] = w
    for i, src in enumerate(sources[2 * PLANTED:], start=2 * PLANTED):  # a 15-word passage copied
        eval_words[i] = eval_words[i][:20] + train_words[src][10:25] + eval_words[i][20:35]
    kinds = {"exact": (0, sources[:PLANTED]), "3 words replaced": (PLANTED, sources[PLANTED:2 * PLANTED]),
             "passage": (2 * PLANTED, sources[2 * PLANTED:])}
    return [" ".join(w) for w in train_words], [" ".join(w) for w in eval_words], kinds


def recall(pairs: set[tuple[int, int]], kinds) -> dict[str, float]:
    return {k: np.mean([(start + i, int(src)) in pairs for i, src in enumerate(srcs)]) for k, (start, srcs) in kinds.items()}


def datasketch_lsh(train: list[str], evals: list[str], num_perm: int = 128, threshold: float = 0.5):
    from datasketch import MinHash, MinHashLSH

    def shingles(text):
        w = text.lower().split()
        return [" ".join(w[i:i + 3]).encode() for i in range(len(w) - 2)]

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, m in enumerate(MinHash.bulk([shingles(t) for t in train], num_perm=num_perm)):
        lsh.insert(i, m)
    pairs = set()
    for i, m in enumerate(MinHash.bulk([shingles(t) for t in evals], num_perm=num_perm)):
        pairs.update((i, j) for j in lsh.query(m))
    return pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=1_000_000)
    p.add_argument("--eval", type=int, default=100_000)
    p.add_argument("--baseline-train", type=int, default=100_000, help="training documents the baseline gets")
    args = p.parse_args()
    import datasketch

    t = time.perf_counter()
    train, evals, kinds = make_corpus(args.train, args.eval)
    print(f"generated {len(train):,} + {len(evals):,} documents in {time.perf_counter() - t:.0f} s")

    def ours(tr, ev):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            found = find_leaks(tr, ev, Settings())
            seconds = time.perf_counter() - t0
        return seconds, mem.peak, found

    full_s, full_rss, found = ours(train, evals)
    by_method = {m: {(x.eval_index, x.train_index) for x in found if x.method == m} for m in ("exact", "ngram", "near_dup")}
    any_pair = set().union(*by_method.values())

    n_bt, n_be = args.baseline_train, args.eval * args.baseline_train // args.train
    sub_s, _, _ = ours(train[:n_bt], evals[:n_be])
    t0 = time.perf_counter()
    base_pairs = datasketch_lsh(train[:n_bt], evals[:n_be])
    base_s = time.perf_counter() - t0

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
          f"numpy {np.__version__}, datasketch {datasketch.__version__}")
    print(f"command: python benchmarks/bench_leakage.py --train {args.train} --eval {args.eval} "
          f"--baseline-train {args.baseline_train}\n")
    rows = [("ours, all three methods", f"{args.train:,} × {args.eval:,}", full_s, full_rss),
            ("ours, all three methods", f"{n_bt:,} × {n_be:,}", sub_s, None),
            ("datasketch MinHashLSH (near dup only)", f"{n_bt:,} × {n_be:,}", base_s, None)]
    print(f"{'':40} {'documents':>22} {'seconds':>8} {'docs/s':>10} {'peak RSS':>9}")
    for name, size, s, rss in rows:
        a, b = (int(x.replace(",", "")) for x in size.split(" × "))
        print(f"{name:40} {size:>22} {s:8.1f} {(a + b) / s:10,.0f} {'' if rss is None else f'{rss / 2**30:.1f} GB':>9}")
    print(f"\nratio, same subset: ours {base_s / sub_s:.1f}× the documents per second of MinHashLSH")
    print(f"goal: ≤ 120 s and ≤ 8 GB at full size: {'met' if full_s <= 120 and full_rss <= 8 * 2**30 else 'NOT met'}")
    print("\nplanted leaks found (of 500 each):")
    print(f"{'':20} {'exact':>6} {'ngram':>6} {'near dup':>9} {'any':>6} {'MinHashLSH':>11}")
    base_recall = recall(base_pairs, kinds)
    per = {m: recall(by_method[m], kinds) for m in by_method}
    anyr = recall(any_pair, kinds)
    for k in kinds:
        print(f"{k:20} {per['exact'][k]:6.0%} {per['ngram'][k]:6.0%} {per['near_dup'][k]:9.0%} {anyr[k]:6.0%} "
              f"{base_recall[k]:11.0%}")
    planted = {(start + i, int(s)) for start, srcs in kinds.values() for i, s in enumerate(srcs)}
    print(f"\nflagged pairs besides the planted ones: ours {len(any_pair - planted)}, "
          f"MinHashLSH {len(base_pairs - planted)} (on its subset)")


if __name__ == "__main__":
    main()
