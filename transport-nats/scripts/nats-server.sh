#!/usr/bin/env bash
# Runs the NATS server the looppool-nats tests and benchmarks use: Debian's `nats-server`
# package, on a loopback port, with JetStream and a temporary store.
#
#   nats-server.sh install        install the package if `nats-server` is missing (root)
#   nats-server.sh start [PORT]   start it (default port 4222); prints the URL to use as
#                                 LOOPPOOL_NATS_URL, and waits until it accepts connections
#   nats-server.sh stop  [PORT]   stop it and delete its store
set -euo pipefail

cmd=${1:-}
port=${2:-4222}
dir=${TMPDIR:-/tmp}/looppool-nats-$port

case "$cmd" in
install)
    if ! command -v nats-server >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    fi
    nats-server --version
    ;;
start)
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        echo "nats-server already runs on port $port (pid $(cat "$dir/pid"))" >&2
        exit 1
    fi
    rm -rf "$dir"
    mkdir -p "$dir/store"
    nats-server -a 127.0.0.1 -p "$port" -js -sd "$dir/store" >"$dir/log" 2>&1 &
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
