#!/usr/bin/env bash
# Runs the throughput, latency, payload, startup, idle and offload scenarios on looppool and on
# its peers, on this machine, and prints one JSON line per result (looppool-bench's format).
#
#   bash bench/peers/run.sh            # from the repository's root
#
# Needs Python 3 with venv (the Python Looppool 0.4.0 and tornado 4.5.3 are installed in a
# virtual environment under target/peers/venv) and the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/../.."
peers=bench/peers
out=target/peers
mkdir -p "$out"

echo "== looppool (tokio, 2 workers)" >&2
cargo build --release -q -p looppool-bench
for s in throughput latency payload startup idle offload; do
    target/release/looppool-bench "$s" --workers 2 --json
done

echo "== Python Looppool 0.4.0 on tornado 4.5.3 (2 workers)" >&2
if [ ! -x "$out/venv/bin/python" ]; then
    python3 -m venv "$out/venv"
    "$out/venv/bin/pip" install -q "Looppool==0.4.0" "tornado==4.5.3"
fi
for s in throughput latency payload startup idle offload; do
    "$out/venv/bin/python" "$peers/python-looppool/bench.py" "$s" --workers 2
done

echo "== procspawn 1 (2 workers)" >&2
CARGO_TARGET_DIR="$out" cargo build --release -q --manifest-path "$peers/procspawn/Cargo.toml"
for s in throughput latency startup idle offload; do
    "$out/release/looppool-peer-procspawn" "$s" --workers 2
done
# procspawn 1.0.2 stopped making progress with 1 MiB (and 600 KB) arguments on the machine the
# README's figures come from, so its payload runs with 200 KB tasks.
"$out/release/looppool-peer-procspawn" payload --workers 2 --size 200000
