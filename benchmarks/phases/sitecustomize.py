"""Where a DVC stage process spends its time, by sampling (used by benchmarks/pipeline.py).

Python imports this file at start-up when its folder is on PYTHONPATH. In a process that DVC runs
as a stage (DVC sets DVC_STAGE) and with ISOPROBE_PHASES_DIR set, a daemon thread looks at the main
thread's stack every INTERVAL seconds and books the time since its last look to one phase: the
first that any frame of the stack belongs to, in this order:

- imports: an import in progress (importlib's `_find_and_load`), at start-up or later;
- logging: MLflow and its store (mlflow, sqlalchemy, alembic; isoprobe.core.tracking);
- loading: model and tokenizer loading (`from_pretrained`), safetensors and torch reads;
- writing: safetensors and torch writes, isoprobe.core.io (atomic outputs, JSON);
- compute: everything else (tokenizing, training, embedding, probes, metrics).

At exit it writes <ISOPROBE_PHASES_DIR>/<pid>.json: the stage, the process's wall time from this
import and the seconds per phase. It reads no isoprobe name, so it times any commit of the project
the same way. The sampling costs well under 1% of a core and changes no result."""

import os

INTERVAL = 0.01
PHASES = ("imports", "logging", "loading", "writing", "compute")


def _phase(frame) -> str:
    found = 4
    while frame is not None:
        code = frame.f_code
        name, path = code.co_name, code.co_filename
        if name == "_find_and_load" and path.startswith("<frozen importlib"):
            return "imports"
        if found > 1 and (
            "/mlflow/" in path
            or "/sqlalchemy/" in path
            or "/alembic/" in path
            or path.endswith("isoprobe/core/tracking.py")
        ):
            found = 1
        elif found > 2 and (
            name == "from_pretrained"
            or ("/safetensors/" in path and "save" not in name)
            or (name == "load" and path.endswith("torch/serialization.py"))
        ):
            found = 2
        elif found > 3 and (
            ("/safetensors/" in path and "save" in name)
            or (name == "save" and path.endswith("torch/serialization.py"))
            or path.endswith("isoprobe/core/io.py")
        ):
            found = 3
        frame = frame.f_back
    return PHASES[found]


def _start(folder: str, stage: str) -> None:
    import atexit
    import json
    import sys
    import threading
    import time

    main = threading.main_thread().ident
    seconds = dict.fromkeys(PHASES, 0.0)
    t0 = time.perf_counter()

    def sample() -> None:
        last = time.perf_counter()
        while True:
            time.sleep(INTERVAL)
            frame = sys._current_frames().get(main)
            now = time.perf_counter()
            if frame is not None:
                seconds[_phase(frame)] += now - last
            last = now

    def report() -> None:
        doc = {
            "stage": stage,
            "argv": sys.argv,
            "wall_seconds": time.perf_counter() - t0,
            "seconds": dict(seconds),
        }
        path = os.path.join(folder, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(path + ".tmp", path)

    threading.Thread(target=sample, name="phase-sampler", daemon=True).start()
    atexit.register(report)


if os.environ.get("ISOPROBE_PHASES_DIR") and os.environ.get("DVC_STAGE"):
    _start(os.environ["ISOPROBE_PHASES_DIR"], os.environ["DVC_STAGE"])
