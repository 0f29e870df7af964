"""DirectProbe on TREC (../shared/data/trec): [CLS] of the embedded model, last layer, max length 64.

For coarse and fine labels and N = 1000, 2000 and all 5452 training rows (a seeded random subset):
fit time, cluster count, LP calls (exact separability decisions) and the peak memory of the run
(each run in a fresh process); with --predict also the nearest-hull accuracy on the 500 test
questions and the prediction time; then the growth exponent of fit time in N (slope of log time on
log N). Prints one JSON document (progress lines go to stderr).

    python benchmarks/directprobe.py [--sizes 1000 2000 5452] [--labels coarse fine] [--predict]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trec_embeddings import load  # noqa: E402

from isoprobe.probing.directprobe import DirectProbe  # noqa: E402


def run(granularity: str, n: int, seed: int, predict: bool) -> dict:
    """One fit (and prediction) on a seeded subset of n training rows; meant for a fresh process
    (its stdout, where HiGHS prints a banner, goes to stderr: stdout is for the JSON document)."""
    os.dup2(2, 1)
    data = load()
    X, y = data["X_train"], data[f"{granularity}_train"]
    rows = np.sort(np.random.default_rng(seed).permutation(len(X))[: min(n, len(X))])
    t0 = time.perf_counter()
    probe = DirectProbe().fit(X[rows], y[rows])
    seconds = time.perf_counter() - t0
    out = {
        "labels": granularity,
        "n": int(rows.size),
        "n_labels": int(len(probe.labels_)),
        "clusters": probe.n_clusters_,
        "fit_seconds": round(seconds, 2),
        "conflicting_rows": probe.conflicts_["rows"],
        "stats": {k: v for k, v in vars(probe.stats_).items() if k != "extra"} | probe.stats_.extra,
    }
    if predict:
        t0 = time.perf_counter()
        out["test_accuracy"] = round(probe.score(data["X_test"], data[f"{granularity}_test"]), 4)
        out["predict_seconds"] = round(time.perf_counter() - t0, 2)
        out["test_rows"] = int(len(data["X_test"]))
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5452])
    p.add_argument("--labels", nargs="+", default=["coarse", "fine"], choices=["coarse", "fine"])
    p.add_argument("--predict", action="store_true", help="also score the test questions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    load()  # embed once (cached) before the runs
    spawn = multiprocessing.get_context("spawn")
    runs = []
    for granularity in args.labels:
        sizes, times = [], []
        for n in args.sizes:
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                result = pool.submit(run, granularity, n, args.seed, args.predict).result()
            sizes.append(result["n"])
            times.append(result["fit_seconds"])
            runs.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
        if len(times) > 1:
            slope = np.polyfit(np.log(sizes), np.log(np.maximum(times, 1e-3)), 1)[0]
            runs.append({"labels": granularity, "growth_exponent": round(float(slope), 2)})
    print(json.dumps({"benchmark": "directprobe_trec", "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
