"""The throughput and latency scenarios of looppool-bench, on the Python Looppool 0.4.0.

Run by ../run.sh, which installs Looppool 0.4.0 and tornado 4.5.3 in a virtual environment.
Prints one JSON line per result, in looppool-bench's format (no floor: compare with the
floor that looppool-bench prints on the same machine).

    python bench.py throughput|latency|payload|startup|idle|offload [--workers N] [--tasks N]
"""

import argparse
import collections
import collections.abc
import http.client
import itertools
import json
import multiprocessing
import socket
import threading
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


SLOW = 0.020
"""The CPU work of one slow request, in seconds (as looppool-bench's offload)."""


def spin(seconds):
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


class SpinWorker(looppool.Worker):
    """Does a slow request's CPU work, then answers with the request's key."""

    @looppool.task_done
    def _process_message(self, key):
        spin(SLOW)
        self._put_nowait(key)


def report(scenario, metric, workers, value, unit, floor=None):
    print(json.dumps({
        "scenario": scenario, "metric": metric, "runtime": "python-looppool-0.4.0",
        "workers": workers, "value": round(value, 3), "unit": unit,
        "floor": None if floor is None else round(floor, 3),
        "ratio": None if floor is None else round(value / floor, 3),
    }), flush=True)


def windowed_echo(workers, tasks, per_worker, message):
    """Echoes `tasks` copies of `message`, at most `per_worker` in flight per worker; seconds."""
    loop = ioloop.IOLoop.instance()
    pool = looppool.Pool(loop, workers, EchoWorker, max_tasks=WINDOW, max_results=WINDOW)
    state = {"sent": 0, "done": 0, "in_flight": [0] * workers}

    def top_up(worker):
        while state["sent"] < tasks and state["in_flight"][worker] < per_worker:
            pool.put_nowait(message, worker_num=worker)
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
    start = time.perf_counter()
    for w in range(workers):
        loop.add_callback(top_up, w)
    loop.start()
    took = time.perf_counter() - start
    pool.stop()
    return took


def throughput(workers, tasks):
    """16-byte echo tasks, at most 256 in flight (128 per worker for 2 workers)."""
    took = windowed_echo(workers, tasks, WINDOW // workers, b"x" * 16)
    report("throughput", "rate", workers, tasks / took, "tasks/s")


def payload(workers, tasks):
    """1 MiB echo tasks, two in flight per worker: gigabytes per second each way."""
    took = windowed_echo(workers, tasks, 2, b"x" * (1 << 20))
    report("payload", "bandwidth", workers, tasks * (1 << 20) / took / 1e9, "GB/s")


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


def answer_each(pool, loop, workers):
    """Sends one task to each worker and runs the loop until all answered."""
    left = {"n": workers}

    @looppool.task_done
    def process_message(result, result_done):
        left["n"] -= 1
        if left["n"] == 0:
            loop.add_callback(loop.stop)

    pool.process_message = process_message
    for w in range(workers):
        pool.put_nowait(b"x", worker_num=w)
    loop.start()


def startup(rounds):
    """From building a pool of 8 to each worker having answered a task; median of rounds."""
    loop = ioloop.IOLoop.instance()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        pool = looppool.Pool(loop, 8, EchoWorker, max_tasks=WINDOW, max_results=WINDOW)
        pool.start()
        answer_each(pool, loop, 8)
        times.append(time.perf_counter() - start)
        pool.stop()
    times.sort()
    report("startup", "8 workers", 8, times[len(times) // 2] * 1e3, "ms")


def idle(workers):
    """Resident memory of an idle worker process (the largest of the pool)."""
    loop = ioloop.IOLoop.instance()
    pool = looppool.Pool(loop, workers, EchoWorker, max_tasks=WINDOW, max_results=WINDOW)
    pool.start()
    answer_each(pool, loop, workers)
    time.sleep(0.2)
    rss = 0
    for process in pool._pool:
        with open(f"/proc/{process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = max(rss, int(line.split()[1]) * 1024)
    pool.stop()
    report("idle", "rss", workers, rss / (1 << 20), "MiB")


def load(port, path, stop):
    """A client process that keeps slow requests going until `stop` is set."""
    conn = http.client.HTTPConnection("127.0.0.1", port)
    while not stop.is_set():
        conn.request("GET", path)
        conn.getresponse().read()


def fast_p99(port, n, path, clients):
    """The p99 of `n` sequential fast requests while `clients` processes request `path`."""
    stop = multiprocessing.Event()
    loaders = [multiprocessing.Process(target=load, args=(port, path, stop))
               for _ in range(clients if path else 0)]
    for p in loaders:
        p.start()
    time.sleep(SLOW * 2)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", "/fast")
        conn.getresponse().read()
        times.append(time.perf_counter() - start)
        time.sleep(0.0005)
    stop.set()
    for p in loaders:
        p.join()
    times.sort()
    return times[round((len(times) - 1) * 0.99)]


def offload_client(port, requests, clients, results):
    unloaded = fast_p99(port, requests, None, 0)
    pooled = fast_p99(port, requests, "/slow", clients)
    inline = fast_p99(port, max(requests // 20, 10), "/slow-inline", clients)
    results.put((unloaded, pooled, inline))


def offload(workers, requests):
    """The seeds' scenario: fast requests answered on the server's loop while slow ones do 20 ms
    of CPU work in the pool, or inline; fast-request p99 against the unloaded p99."""
    from tornado import concurrent, httpserver, web

    loop = ioloop.IOLoop.instance()
    pool = looppool.Pool(loop, workers, SpinWorker, max_tasks=WINDOW, max_results=WINDOW)
    waiting = {}
    keys = itertools.count()

    @looppool.task_done
    def process_message(key, result_done):
        waiting.pop(key).set_result(None)

    pool.process_message = process_message
    pool.start()

    class Fast(web.RequestHandler):
        def get(self):
            self.write("fast")

    class Slow(web.RequestHandler):
        @gen.coroutine
        def get(self):
            key = next(keys)
            waiting[key] = done = concurrent.Future()
            pool.put_nowait(key)
            yield done
            self.write("slow")

    class SlowInline(web.RequestHandler):
        def get(self):
            spin(SLOW)
            self.write("slow")

    app = web.Application([("/fast", Fast), ("/slow", Slow), ("/slow-inline", SlowInline)])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    server = httpserver.HTTPServer(app)
    server.add_sockets([listener])
    port = listener.getsockname()[1]

    results = multiprocessing.Queue()
    client = multiprocessing.Process(
        target=offload_client, args=(port, requests, 2 * workers, results))
    client.start()
    phases = {}

    def wait_for_client():
        phases["p99"] = results.get()
        loop.add_callback(loop.stop)

    threading.Thread(target=wait_for_client, daemon=True).start()
    loop.start()
    client.join()
    server.stop()
    pool.stop()
    unloaded, pooled, inline = phases["p99"]
    report("offload", "fast p99", workers, pooled * 1e6, "us", unloaded * 1e6)
    report("offload", "inline p99", workers, inline * 1e6, "us", unloaded * 1e6)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario", choices=["throughput", "latency", "payload", "startup", "idle", "offload"]
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=0)
    args = parser.parse_args()
    if args.scenario == "throughput":
        throughput(args.workers, args.tasks or 100_000)
    elif args.scenario == "latency":
        latency(args.workers, args.tasks or 5_000)
    elif args.scenario == "payload":
        payload(args.workers, args.tasks or 64)
    elif args.scenario == "startup":
        startup(args.tasks or 7)
    elif args.scenario == "offload":
        offload(args.workers, args.tasks or 2000)
    else:
        idle(args.workers)
