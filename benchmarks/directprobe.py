"""DirectProbe on TREC (../shared/data/trec): [CLS] of the embedded model, last layer, max length 64.

For coarse and fine labels and N = 1000, 2000 and all 5452 training rows (a seeded random subset):
fit time, cluster count, LP calls and peak memory; with --predict also the nearest-hull accuracy on
the 500 test questions; then the growth exponent of fit time in N. Prints one JSON document.

    python benchmarks/directprobe.py [--sizes 1000 2000 5452] [--labels coarse fine] [--predict]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trec_embeddings import load  # noqa: E402

from isoprobe.directprobe import DirectProbe  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5452])
    p.add_argument("--labels", nargs="+", default=["coarse", "fine"], choices=["coarse", "fine"])
    p.add_argument("--predict", action="store_true", help="also score the test questions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = load()
    X = data["X_train"]
    runs = []
    for granularity in args.labels:
        y = data[f"{granularity}_train"]
        times = []
        for n in args.sizes:
            rows = np.sort(np.random.default_rng(args.seed).permutation(len(X))[: min(n, len(X))])
            t0 = time.perf_counter()
            probe = DirectProbe().fit(X[rows], y[rows])
            seconds = time.perf_counter() - t0
            times.append(seconds)
            run = {
                "labels": granularity,
                "n": int(rows.size),
                "n_labels": int(len(probe.labels_)),
                "clusters": probe.n_clusters_,
                "fit_seconds": round(seconds, 2),
                "conflicting_rows": probe.conflicts_["rows"],
                "stats": {k: v for k, v in vars(probe.stats_).items() if k != "extra"},
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
            if args.predict:
                t0 = time.perf_counter()
                run["test_accuracy"] = probe.score(data["X_test"], data[f"{granularity}_test"])
                run["predict_seconds"] = round(time.perf_counter() - t0, 2)
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
        if len(times) > 1:
            slope = np.polyfit(np.log(args.sizes[: len(times)]), np.log(times), 1)[0]
            runs.append({"labels": granularity, "growth_exponent": round(float(slope), 2)})
    print(json.dumps({"benchmark": "directprobe_trec", "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
