"""The float32 Lloyd step alone: the transposed step against the row step.

One float32 hard pass (``data_pass`` with the k-means family and the hard
rule, statistics on, 1 thread) over uniform rows, per shape, with
``_float32_labelling("rows")`` and ``_float32_labelling("transposed")``
alternated in one process; the minimum and median CPU time
(``time.process_time``) over the repeats and their ratio are printed, with
the load average, and whether both gave the same labels and statistics (they
must: the same scores, plugins/_lloyd.h). At shapes outside the transposed
step's rule (d <= 32 or k >= d) both modes run the row step: a ratio near 1.

Run from outside the source tree so that the installed emcore is imported:

    cd /tmp && python /path/to/benchmarks/bench_lloyd_f32.py
    cd /tmp && python /path/to/benchmarks/bench_lloyd_f32.py --shape 1e6,16,16 --repeats 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kmeans import make_data  # noqa: E402

SHAPES = ("2e5,3,5", "2e5,8,8", "2e5,16,16", "2e5,20,10", "2e5,32,100", "2e5,48,64",
          "2e5,64,32", "2e5,64,8")


def run_shape(n: int, d: int, k: int, repeats: int) -> None:
    from emcore._chunks import chunk_rows_for
    from emcore._core._passes import data_pass
    from emcore.plugins._kmeans_kernel import _float32_labelling
    from emcore.registry import get_registry

    X, centres = make_data(n, d, k, 0, "float32")
    family = get_registry().family("kmeans").factory(k, d, dtype="float32")
    kernel = family.compiled_kernel({"means": centres.astype(np.float64)})
    rule = get_registry().posterior_rule("hard").factory().compiled_kernel()
    log_weights = np.full(k, np.log(1.0 / k))
    labels, values = np.empty(n, dtype=np.intp), np.empty(n)
    modes = ("rows", "transposed")
    seconds = {m: [] for m in modes}
    results = {}
    try:
        for _ in range(repeats):
            for mode in modes:
                _float32_labelling(mode)
                c0 = time.process_time()
                out = data_pass(kernel, rule, X, log_weights, None, chunk_rows_for(d), 1, True,
                                out_labels=labels, out_row_value=values)
                seconds[mode].append(time.process_time() - c0)
                results[mode] = (labels.copy(), out[0].copy())
    finally:
        _float32_labelling("transposed")
    same = all(np.array_equal(a, b) for a, b in zip(results["rows"], results["transposed"]))
    lo = {m: min(v) for m, v in seconds.items()}
    med = {m: statistics.median(v) for m, v in seconds.items()}
    print(f"{n:>8d} {d:>4d} {k:>4d}  {lo['rows']:.4f} {lo['transposed']:.4f} "
          f"{lo['transposed'] / lo['rows']:6.2f}   {med['rows']:.4f} {med['transposed']:.4f} "
          f"{med['transposed'] / med['rows']:6.2f}   {str(same):>5}  {os.getloadavg()[0]:.2f}",
          flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs="+", default=list(SHAPES), help="n,d,k (n may be 1e6)")
    p.add_argument("--repeats", type=int, default=9)
    args = p.parse_args(argv)
    from emcore.plugins._kmeans_kernel import _float32_labelling
    if _float32_labelling() != "transposed":
        print("this CPU (or build) has no x86-64-v4 loop: only the row step runs")
        return 0
    print("CPU s per pass (1 thread): min rows / transposed / ratio, then the medians; "
          "same bits; load")
    print(f"{'n':>8} {'d':>4} {'k':>4}  {'min: rows  trans  ratio':>22}   "
          f"{'median: rows  trans  ratio':>26}   same  load")
    for shape in args.shape:
        n, d, k = (int(float(v)) for v in shape.split(","))
        run_shape(n, d, k, args.repeats)
    print(f"load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
