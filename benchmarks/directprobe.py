"""DirectProbe on TREC (../shared/data/trec) and on the words of UD English PUD.

--case trec (default): [CLS] of the embedded model, last layer, max length 64. For coarse and fine labels and N = 1000, 2000 and all 5452 training rows (a seeded random subset):
fit time, cluster count, LP calls (exact separability decisions) and the peak memory of the run
(each run in a fresh process); with --predict also the nearest-hull accuracy on the 500 test
questions and the prediction time; then the growth exponent of fit time in N (slope of log time on
log N). Prints one JSON document (progress lines go to stderr).

    python benchmarks/directprobe.py [--sizes 1000 2000 5452] [--labels coarse fine] [--predict]

--case pud: the word vectors of task `pos` (params.yaml split, all training words, every layer of
the embedded model; pud_embeddings.py caches them). Per layer, in a fresh process: the fit on the
training words, the cluster distances (label_distances, as the probe stage computes them) and the
nearest-cluster predictions of the test words, timed apart; target <= 60 s per layer for the three.
A layer still running after --timeout seconds is stopped and reported as missed.

    python benchmarks/directprobe.py --case pud [--layers 0 1 2 3 4 5 6] [--max-rows N] [--timeout 900]
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


PUD_TARGET_SECONDS = 60.0


def run_pud(layer: int, max_rows: int | None, seed: int) -> dict:
    """Fit, cluster distances and test predictions on the PUD words of one layer (fresh process)."""
    os.dup2(2, 1)
    from pud_embeddings import load as load_pud

    data = load_pud()
    X, y = data["X_train"][layer], data["y_train"]
    rows = np.arange(len(y))
    if max_rows is not None and max_rows < len(y):
        rows = np.sort(np.random.default_rng(seed).permutation(len(y))[:max_rows])
    t0 = time.perf_counter()
    probe = DirectProbe().fit(X[rows], y[rows])
    fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    distances = probe.label_distances() if probe.n_clusters_ else None
    dist = time.perf_counter() - t0
    t0 = time.perf_counter()
    accuracy = probe.score(data["X_test"][layer], data["y_test"]) if probe.n_clusters_ else None
    pred = time.perf_counter() - t0
    total = fit + dist + pred
    return {
        "layer": layer,
        "n": int(rows.size),
        "n_labels": int(len(probe.labels_)),
        "clusters": probe.n_clusters_,
        "conflicting_rows": probe.conflicts_["rows"],
        "fit_seconds": round(fit, 2),
        "distances_seconds": round(dist, 2),
        "predict_seconds": round(pred, 2),
        "seconds": round(total, 2),
        "test_rows": int(len(data["y_test"])),
        "test_accuracy": None if accuracy is None else round(accuracy, 4),
        "min_distance": None
        if distances is None or not np.isfinite(distances).any()
        else float(np.nanmin(distances)),
        "target_met": total <= PUD_TARGET_SECONDS,
        "stats": {k: v for k, v in vars(probe.stats_).items() if k != "extra"} | probe.stats_.extra,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _pud_worker(conn, layer: int, max_rows: int | None, seed: int) -> None:
    conn.send(run_pud(layer, max_rows, seed))
    conn.close()


def main_pud(args) -> None:
    from pud_embeddings import load as load_pud

    load_pud()  # embed once (cached) before the runs
    spawn = multiprocessing.get_context("spawn")
    runs = []
    for layer in args.layers:
        receive, send = spawn.Pipe(duplex=False)
        proc = spawn.Process(target=_pud_worker, args=(send, layer, args.max_rows, args.seed))
        t0 = time.perf_counter()
        proc.start()
        send.close()
        result = None
        if receive.poll(args.timeout):
            try:
                result = receive.recv()
            except EOFError:  # the process died without a result
                result = None
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        if result is None:
            result = {
                "layer": layer,
                "error": f"no result within {args.timeout:.0f} s (exit code {proc.exitcode})",
                "seconds": round(time.perf_counter() - t0, 2),
                "target_met": False,
            }
        runs.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "directprobe_pud",
                "target_seconds_per_layer": PUD_TARGET_SECONDS,
                "load_average": list(os.getloadavg()),
                "runs": runs,
                "target_met": all(r["target_met"] for r in runs),
            },
            indent=2,
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--case", choices=["trec", "pud"], default="trec")
    p.add_argument("--layers", type=int, nargs="+", default=list(range(7)), help="pud: layers")
    p.add_argument("--max-rows", type=int, default=None, help="pud: seeded subsample of words")
    p.add_argument("--timeout", type=float, default=900.0, help="pud: seconds per layer")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5452])
    p.add_argument("--labels", nargs="+", default=["coarse", "fine"], choices=["coarse", "fine"])
    p.add_argument("--predict", action="store_true", help="also score the test questions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.case == "pud":
        main_pud(args)
        return
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
    print(
        json.dumps(
            {"benchmark": "directprobe_trec", "load_average": list(os.getloadavg()), "runs": runs},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
