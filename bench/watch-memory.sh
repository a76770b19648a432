#!/usr/bin/env bash
# The memory part of bench/run.sh's 1,000-watch workload, alone and for several builds
# side by side: for comparing allocators, link settings and profiles without the whole
# 8-minute benchmark.
#
#   bench/watch-memory.sh LABEL=BINARY[,VAR=VALUE...] ...
#   WM_ROUNDS=2 WM_WATCHES=1000 WM_HOLD=20 bench/watch-memory.sh \
#     custom=target/release/kube-ambassador static=target/x86_64-unknown-linux-gnu/release/kube-ambassador
#
# Each target is started in front of the fake API server (in-cluster mode, as run.sh
# does), sent one request, and read idle; then `bench-client watches` holds WM_WATCHES
# watches (one namespace each, the fake sending one event a millisecond over them) for
# WM_HOLD seconds while /proc is sampled every 0.5 s. The rounds interleave the targets.
# Printed, one line per target and round (KiB): idle VmRSS = RssAnon (the process's own
# memory: heap, stacks, buffers) + RssFile (the binary's code and read-only data, and the
# shared libraries': page cache that every copy of the same file on a node shares); the
# sample with the highest VmRSS while the watches are held; and what is left 2 s after
# they close. WM_COLD=1 drops the binary's pages from the page cache before each start
# (posix_fadvise DONTNEED), as for a container's first start on a node.
# Needs the fake API server and bench-client: looked for in $CARGO_TARGET_DIR (default
# target/) under release/ then debug/ (a debug build is enough, they are not what is
# measured); WM_EXAMPLES=DIR says where instead (fake-apiserver in DIR or DIR/.., as
# cargo puts a binary beside examples/). WM_BUILD=1 first runs `cargo build --release`
# (the binary a target such as base=$CARGO_TARGET_DIR/release/kube-ambassador names) and
# builds the two tools, both into $CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${WM_ROUNDS:-2}
WATCHES=${WM_WATCHES:-1000}
HOLD=${WM_HOLD:-20}
PORT=${WM_PORT:-18101}
TARGET=${CARGO_TARGET_DIR:-target}
[ $# -gt 0 ] || { sed -n 2,23p "$0"; exit 2; }
if [ "${WM_BUILD:-}" = 1 ]; then
  cargo build --release --locked --bin kube-ambassador >&2
  cargo build --release --locked --workspace --bin fake-apiserver --example bench-client >&2
fi
# The first directory that has both tools: release's (what WM_BUILD=1 builds), then debug's.
if [ -n "${WM_EXAMPLES:-}" ]; then
  EX=$WM_EXAMPLES
  FAKE=$EX/fake-apiserver
  [ -x "$FAKE" ] || FAKE=$EX/../fake-apiserver
else
  for profile in release debug; do
    EX=$TARGET/$profile/examples FAKE=$TARGET/$profile/fake-apiserver
    [ -x "$EX/bench-client" ] && [ -x "$FAKE" ] && break
  done
fi
for tool in "$FAKE" "$EX/bench-client"; do
  [ -x "$tool" ] || { echo "watch-memory: $tool is missing (WM_BUILD=1 builds it)" >&2; exit 1; }
done
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d -t ka-wm.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh
# A fresh fake for every run: its watch history keeps 10,000 events, so after ten seconds
# of one event a millisecond a watch from resourceVersion=1 would get 410 Expired and end.
fresh_fake() {
  [ -z "${fake:-}" ] || { kill -KILL "$fake"; wait "$fake" 2>/dev/null || true; }
  start_fake "$FAKE" "$work/fake" --pods 10 --spread "$WATCHES" --quiet || exit 1
  fake=$FAKE_PID
  pids+=("$fake")
  fake_port=$FAKE_PORT
  sa=$FAKE_SA
}

# KiB: VmRSS RssAnon RssFile
mem() { awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s%s", sep, $2; sep = " "}' "/proc/$1/status"; }
evict() {
  python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

printf '%-10s %5s | %-20s | %-20s | %-20s | %s\n' target round 'idle: rss anon file' 'watches: (same)' 'after: (same)' 'events, min per watch'
for r in $(seq "$ROUNDS"); do
  for spec in "$@"; do
    label=${spec%%=*} rest=${spec#*=}
    IFS=, read -r -a parts <<<"$rest"
    bin=${parts[0]}
    [ "${WM_COLD:-}" != 1 ] || evict "$bin"
    fresh_fake
    env "${parts[@]:1}" KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT="$fake_port" \
      "$bin" --service-account-dir="$sa" --port="$PORT" >"$work/ka.log" 2>&1 &
    ka=$!
    pids+=("$ka")
    for _ in $(seq 200); do
      "$EX/bench-client" get --url "http://127.0.0.1:$PORT/api/v1/namespaces/default/pods/pod-0" \
        >/dev/null 2>&1 && break
      sleep 0.05
    done
    sleep 1
    idle=$(mem "$ka")
    "$EX/bench-client" watches --n "$WATCHES" --hold "$HOLD" --pid "$ka" \
      --url "http://127.0.0.1:$PORT/api/v1/namespaces/bench-spread-{i}/pods?watch=1&resourceVersion=1" \
      >"$work/watches.out" 2>&1 &
    client=$!
    peak='0 0 0'
    while kill -0 "$client" 2>/dev/null; do
      now=$(mem "$ka")
      # The sample with the largest VmRSS, whole (its anon/file/private alongside).
      if [ "${now%% *}" -gt "${peak%% *}" ]; then peak=$now; fi
      sleep 0.5
    done
    wait "$client" || { echo "watch-memory: $label: $(cat "$work/watches.out")" >&2; exit 1; }
    grep -q '^watches_open='"$WATCHES"'$' "$work/watches.out" ||
      { echo "watch-memory: $label: not all watches opened: $(cat "$work/watches.out")" >&2; exit 1; }
    sleep 2
    after=$(mem "$ka")
    kill "$ka"
    wait "$ka" 2>/dev/null || true
    printf '%-10s %5s | %-20s | %-20s | %-20s | %s\n' "$label" "$r" "$idle" "$peak" "$after" \
      "$(kv events "$work/watches.out") $(kv events_per_watch_min "$work/watches.out")"
  done
done
