#!/usr/bin/env bash
# Starts a 3-node Nexus cluster on this machine for trying things out:
#   node N: gRPC 127.0.0.1:77N0, peer 127.0.0.1:77N1, HTTP 127.0.0.1:900N, data in
#   ./nexus-cluster/nodeN (logs beside it). Ctrl-C stops all three.
# Build first: cargo build --release --bin nexus --bin nexusctl
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${NEXUS_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/nexus}"
[ -x "$bin" ] || { echo "error: $bin not found; run: cargo build --release --bin nexus --bin nexusctl" >&2; exit 1; }
base="${NEXUS_CLUSTER_DIR:-./nexus-cluster}"
mkdir -p "$base"
members="1=127.0.0.1:7711/127.0.0.1:7710,2=127.0.0.1:7721/127.0.0.1:7720,3=127.0.0.1:7731/127.0.0.1:7730"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for n in 1 2 3; do
  "$bin" serve --node-id "$n" --data-dir "$base/node$n" \
    --grpc-addr "127.0.0.1:77${n}0" --peer-addr "127.0.0.1:77${n}1" --http-addr "127.0.0.1:900${n}" \
    --initial-cluster "$members" >"$base/node$n.log" 2>&1 &
  pids+=($!)
done
echo "3 nodes starting; logs in $base/nodeN.log. Try:"
echo "  nexusctl --endpoint http://127.0.0.1:7720 status"
echo "  nexusctl --endpoint http://127.0.0.1:7730 memory put notes hello '\"world\"'"
wait
