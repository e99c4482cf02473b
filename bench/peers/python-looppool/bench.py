"""The throughput and latency scenarios of looppool-bench, on the Python Looppool 0.4.0.

Run by ../run.sh, which installs Looppool 0.4.0 and tornado 4.5.3 in a virtual environment.
Prints one JSON line per result, in looppool-bench's format (no floor: compare with the
floor that looppool-bench prints on the same machine).

    python bench.py throughput|latency [--workers N] [--tasks N]
"""

import argparse
import collections
import collections.abc
import json
import time

# tornado 4.5 predates Python 3.10, which removed these aliases from `collections`.
for _name in ("MutableMapping", "Mapping", "MutableSet", "Sequence", "Iterable", "Callable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))

import looppool  # noqa: E402
from tornado import gen, ioloop  # noqa: E402

WINDOW = 256


class EchoWorker(looppool.Worker):
    """Echoes each task back, tagged with its worker number."""

    @looppool.task_done
    def _process_message(self, task):
        self._put_nowait((self._number, task))


def report(scenario, metric, workers, value, unit):
    print(json.dumps({
        "scenario": scenario, "metric": metric, "runtime": "python-looppool-0.4.0",
        "workers": workers, "value": round(value, 3), "unit": unit, "floor": None, "ratio": None,
    }), flush=True)


def throughput(workers, tasks):
    """16-byte echo tasks, at most 256 in flight (128 per worker for 2 workers)."""
    loop = ioloop.IOLoop.instance()
    per_worker = WINDOW // workers
    pool = looppool.Pool(loop, workers, EchoWorker, max_tasks=WINDOW, max_results=WINDOW)
    state = {"sent": 0, "done": 0, "in_flight": [0] * workers, "start": None}
    payload = b"x" * 16

    def top_up(worker):
        while state["sent"] < tasks and state["in_flight"][worker] < per_worker:
            pool.put_nowait(payload, worker_num=worker)
            state["in_flight"][worker] += 1
            state["sent"] += 1

    @looppool.task_done
    def process_message(result, result_done):
        worker, _ = result
        state["in_flight"][worker] -= 1
        state["done"] += 1
        if state["done"] == tasks:
            loop.add_callback(loop.stop)
        else:
            top_up(worker)

    pool.process_message = process_message
    pool.start()
    state["start"] = time.perf_counter()
    for w in range(workers):
        loop.add_callback(top_up, w)
    loop.start()
    took = time.perf_counter() - state["start"]
    pool.stop()
    report("throughput", "rate", workers, tasks / took, "tasks/s")


def latency(workers, trips):
    """One task in flight; round-trip p50 and p99 in microseconds."""
    loop = ioloop.IOLoop.instance()
    pool = looppool.Pool(loop, workers, EchoWorker, max_tasks=WINDOW, max_results=WINDOW)
    times = []
    state = {"t": 0.0, "n": 0}
    warmup = trips // 10

    def send():
        state["t"] = time.perf_counter()
        pool.put_nowait(b"x" * 16)

    @looppool.task_done
    def process_message(result, result_done):
        took = time.perf_counter() - state["t"]
        state["n"] += 1
        if state["n"] > warmup:
            times.append(took)
        if state["n"] == trips + warmup:
            loop.add_callback(loop.stop)
        else:
            send()

    pool.process_message = process_message
    pool.start()
    loop.add_callback(send)
    loop.start()
    pool.stop()
    times.sort()
    pick = lambda q: times[round((len(times) - 1) * q)] * 1e6  # noqa: E731
    report("latency", "p50", workers, pick(0.50), "us")
    report("latency", "p99", workers, pick(0.99), "us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["throughput", "latency"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=0)
    args = parser.parse_args()
    if args.scenario == "throughput":
        throughput(args.workers, args.tasks or 100_000)
    else:
        latency(args.workers, args.tasks or 5_000)
