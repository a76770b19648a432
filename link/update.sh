#!/usr/bin/env bash
# Regenerates link/hot-symbols.txt and link/hot-symbols-static.txt: the functions the
# release binary executes from start-up through typical traffic, which build.rs hands to
# the linker so that they sit together (see build.rs for why).
#
#   link/update.sh        # about 6 minutes: two release builds and four callgrind runs
#
# Run it after any change to the code, then compare the idle RSS (.ci/static-root.sh
# prints it; bench/run.sh measures it). Fat LTO gives some local functions a numeric
# suffix (`…Error4kind.3614`) in the order it meets them, so code added anywhere, even
# off the request path, renames some hot functions: adding Range support to
# src/www.rs left 20 of them out of the list and raised the static binary's resident
# memory after one request from 4,260 to 5,240 kB; regenerated, 4,216 kB. Needs valgrind
# (apt-get install valgrind). A stale list costs memory only: the linker skips names it
# does not find.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "link/update.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy

# Same profile and target settings as the shipped builds (so the same symbol names), only
# with the symbol table kept. A separate target directory keeps target/release as it is.
export CARGO_TARGET_DIR=$PWD/target/hot KUBE_AMBASSADOR_KEEP_SYMBOLS=1
triple=x86_64-unknown-linux-gnu
# The binary on its own: built together with an example, its dependencies would take the
# dev-dependencies' features too, and every symbol hash would differ from the real build.
cargo build --release --locked -p fake-apiserver
cargo build --release --locked --bin kube-ambassador
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release --locked --target "$triple" --bin kube-ambassador
dynamic=$CARGO_TARGET_DIR/release/kube-ambassador
static=$CARGO_TARGET_DIR/$triple/release/kube-ambassador
fake=$CARGO_TARGET_DIR/release/fake-apiserver

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$fake" --dir "$work/api" --pods 50 --tick-ms 100 --quiet >"$work/api.env" 2>"$work/api.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^KUBECONFIG=' "$work/api.env" 2>/dev/null && break; sleep 0.1; done
kv() { sed -n "s/^$1=//p" "$work/api.env"; }
export KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT
KUBERNETES_SERVICE_PORT=$(kv KUBERNETES_SERVICE_PORT)
sa=$(kv SERVICE_ACCOUNT_DIR)
[ -n "$sa" ] || { echo "link/update.sh: the fake API server did not start: $(cat "$work/api.log")" >&2; exit 1; }

# One profiled run: start-up, what a pod's client sends, the probes and a scrape, then
# SIGTERM. $1 binary, $2 output, the rest extra flags.
profile() {
  local bin=$1 out=$2
  shift 2
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$out" \
    "$bin" --service-account-dir="$sa" --port=0 "$@" >"$work/ka.out" 2>"$work/ka.log" &
  local pid=$!
  local port=
  for _ in $(seq 300); do
    port=$(sed -n 's/^Starting to serve on .*:\([0-9]*\)$/\1/p' "$work/ka.out")
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "link/update.sh: $bin did not start: $(cat "$work/ka.log")" >&2; exit 1; }
  local u=http://127.0.0.1:$port ns=/api/v1/namespaces
  for _ in 1 2 3 4; do curl -sf -o /dev/null "$u$ns/default/pods/pod-0"; done
  curl -sf -o /dev/null "$u$ns/default/pods"
  curl -s -o /dev/null -X POST -H 'content-type: application/json' -d '{"kind":"Pod"}' "$u$ns/default/pods"
  curl -s -o /dev/null -X DELETE "$u$ns/default/pods/pod-1"
  curl -s -o /dev/null -m 2 "$u$ns/bench-ticks/pods?watch=1&resourceVersion=1" || true
  curl -s -o /dev/null --http1.0 "$u$ns/default/pods/pod-0"
  curl -s -o /dev/null "$u$ns/default/pods/missing"
  for p in /healthz /readyz /livez /metrics; do curl -s -o /dev/null "$u$p"; done
  for _ in $(seq 50); do curl -s -o /dev/null "$u$ns/default/pods/pod-0"; done
  kill -TERM "$pid"
  wait "$pid" || true
}

profile "$dynamic" "$work/d1.out"
profile "$dynamic" "$work/d2.out" --upstream-http2=false
profile "$static" "$work/s1.out"
profile "$static" "$work/s2.out" --upstream-http2=false

# The functions callgrind saw executing in the binary itself, as the symbol table names
# them; sorted, so that a regenerated list diffs cleanly.
hot() {
  local bin=$1
  shift
  python3 - "$bin" "$@" <<'PY'
import os, re, subprocess, sys
binary, outs = os.path.realpath(sys.argv[1]), sys.argv[2:]
name = re.compile(r'^(ob|cob|fn|cfn)=\((\d+)\)(?: (.*))?$')
seen = set()
for out in outs:
    objs, fns, current = {}, {}, ''
    with open(out) as f:
        for line in f:
            m = name.match(line.rstrip('\n'))
            if not m:
                continue
            key, ident, text = m.groups()
            table = objs if key in ('ob', 'cob') else fns
            if text:
                table[ident] = text
            if key == 'ob':
                current = os.path.realpath(objs.get(ident, '/'))
            elif key == 'fn' and current == binary:
                seen.add(fns[ident])
# i: an IFUNC, named by its resolver, which static start-up runs for every one.
symbols = subprocess.run(['nm', '--defined-only', binary], check=True,
                         capture_output=True, text=True).stdout
functions = {p[2] for p in (l.split() for l in symbols.splitlines())
             if len(p) == 3 and p[1] in 'tTwWiI'}
hot = seen & functions
# valgrind's virtual CPU is not the one the binary will run on, and code chosen by CPU
# features at run time differs: glibc's string functions (__memcpy_avx_unaligned_erms
# here, an AVX-512 or SSE2 variant there) and ring's assembly (AES-GCM, SHA, P-256).
# So a hot string function brings all its variants, and ring (about 190 KB) comes whole.
variant = re.compile(r'^(__\w+?)_(sse|ssse|avx|evex)')
stems = {m.group(1) for m in map(variant.match, hot) if m}
for f in functions:
    m = variant.match(f)
    if (m and m.group(1) in stems) or f.startswith('ring_core_'):
        hot.add(f)
for s in sorted(hot):
    print(s)
PY
}
hot "$dynamic" "$work/d1.out" "$work/d2.out" >link/hot-symbols.txt
hot "$static" "$work/s1.out" "$work/s2.out" >link/hot-symbols-static.txt
wc -l link/hot-symbols.txt link/hot-symbols-static.txt
