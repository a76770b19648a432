#!/usr/bin/env bash
# Benchmark: a direct TLS client (wrk over HTTP/1.1, and h2load over HTTP/2 as a pod's
# client-go talks) vs kube-ambassador vs `kubectl proxy` (and nginx as a reference
# reverse proxy, and a TCP pass-through as the cost of the hop alone), in front of the
# fake API server, on this machine, in one run. Every workload counts its failed
# requests; the report's second line says whether there were any.
# See bench/README.md.
#
#   bench/run.sh                     # about 8 minutes (after the release builds)
#   BENCH_SECONDS=10 bench/run.sh    # longer wrk runs
#
# Settings (environment):
#   BENCH_SECONDS=3        seconds per wrk run
#   BENCH_ROUNDS=3         rounds of the wrk, 256 MiB and start-up workloads (median reported)
#   BENCH_WATCHES=1000     concurrent watches in the watch workload
#   BENCH_WATCH_SECONDS=20 how long they are held
#   BENCH_WATCH_ROUNDS=1   rounds of the watch workload
#   BENCH_STARTUPS=2       start-up measurements per proxy per round
#   BENCH_TICK_MS=100      fan-out workload: period of the event sent to all the watches
#   BENCH_PORT_BASE=18001  kube-ambassador on BASE, kubectl proxy on BASE+1, nginx on BASE+3,
#                          the pass-through on BASE+4, start-ups on BASE+10
#   BENCH_NGINX=0          leave out the nginx target (skipped anyway where nginx is missing)
#   BENCH_PASSTHROUGH=0    leave out the TCP pass-through (examples/tcp-forward.rs)
#   BENCH_STATIC=0         measure `cargo build --release`'s binary instead of the image's
#                          (static glibc; built only on x86_64)
#   BENCH_OUT=bench/results.md   the report (the raw samples go beside it as .tsv)
#   BENCH_KEEP=1           keep the scratch directory (logs of all the servers)
#   BENCH_KA_ARGS='…'      extra kube-ambassador flags (word-split), e.g. to compare an option
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECS=${BENCH_SECONDS:-3}
ROUNDS=${BENCH_ROUNDS:-3}
WATCHES=${BENCH_WATCHES:-1000}
WATCH_SECS=${BENCH_WATCH_SECONDS:-20}
WATCH_ROUNDS=${BENCH_WATCH_ROUNDS:-1}
STARTUPS=${BENCH_STARTUPS:-2}
TICK_MS=${BENCH_TICK_MS:-100}
PORT_BASE=${BENCH_PORT_BASE:-18001}
PORT_KA=$PORT_BASE
PORT_KC=$((PORT_BASE + 1))
PORT_NG=$((PORT_BASE + 3))
PORT_PT=$((PORT_BASE + 4))
PORT_SU=$((PORT_BASE + 10))
OUT=${BENCH_OUT:-bench/results.md}
read -r -a KA_ARGS <<<"${BENCH_KA_ARGS:-}"
RAW_OUT=${OUT%.md}.tsv
TOKEN=demo-token
POD_PATH=/api/v1/namespaces/default/pods/pod-0
LIST_PATH=/api/v1/namespaces/default/pods
BYTES_PATH='/bytes?n=268435456'
# One namespace per watch ({i}: bench-client puts the watch's number there), with the
# fake's --spread sending one event a millisecond to each namespace in turn; and one
# namespace for all, with --tick-ms sending each event to every watch at once.
WATCH_PATH='/api/v1/namespaces/bench-spread-{i}/pods?watch=1&resourceVersion=1'
FANOUT_PATH='/api/v1/namespaces/bench-ticks/pods?watch=1&resourceVersion=1'

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck source=bench/lib.sh
. bench/lib.sh
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Everything here is loopback: a proxy from the environment must not be used (kubectl
# would honour HTTPS_PROXY for the API server).
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy

# ---------------------------------------------------------------------------- tools
if ! command -v wrk >/dev/null 2>&1; then
  log "installing wrk"
  if [ "$(id -u)" = 0 ]; then SUDO=(); elif command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    die "wrk is missing and this user cannot install it (apt-get install wrk)"
  fi
  "${SUDO[@]}" apt-get install -y wrk >/dev/null 2>&1 ||
    { "${SUDO[@]}" apt-get update >/dev/null && "${SUDO[@]}" apt-get install -y wrk >/dev/null; } ||
    die "could not install wrk"
fi
# h2load: the direct HTTP/2 client (a pod's client-go talks HTTP/2), in the wrk workloads.
H2LOAD=$(command -v h2load || true)
[ -n "$H2LOAD" ] || log "h2load not found: skipping the direct HTTP/2 target (apt-get install nghttp2-client)"
KUBECTL=$(command -v kubectl || true)
TARGETS=(direct kube-ambassador)
if [ -n "$KUBECTL" ]; then
  TARGETS+=(kubectl-proxy)
else
  log "kubectl not found: skipping the kubectl proxy target"
fi
# nginx: a reference for what any reverse-proxy hop costs here (not a kube-ambassador rival).
NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
if [ "${BENCH_NGINX:-1}" = 0 ]; then
  NGINX=''
  log "BENCH_NGINX=0: skipping the nginx target"
elif [ -z "$NGINX" ]; then
  log "nginx not found: skipping the nginx target (apt-get install nginx-light)"
elif ! command -v pgrep >/dev/null 2>&1; then
  NGINX=''
  log "pgrep not found (it finds nginx's worker process): skipping the nginx target"
else
  TARGETS+=(nginx)
fi

# More file descriptors: 1,000 watches through a proxy are 2,000 sockets in it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * WATCHES + 256)) ]; then
  log "open-file limit $(ulimit -n) is too low for $WATCHES watches"
  WATCHES=$(( ($(ulimit -n) - 256) / 2 ))
  log "using $WATCHES watches"
fi

log "building release binaries"
# Two commands: built with the examples, the binary's dependencies would also take the
# dev-dependencies' features, so it would not be the binary `cargo build --release` makes.
cargo build --release --locked --workspace --bin fake-apiserver --example bench-client --example tcp-forward >&2
cargo build --release --locked --bin kube-ambassador >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
# The binary measured is the one the image ships (static glibc, as the Dockerfile builds
# it). `cargo build --release`'s binary, which maps
# the shared glibc too, gets an idle RSS row of its own (OTHER_BIN).
KA_BIN=$BIN/kube-ambassador KA_BUILD='cargo build --release (glibc shared)' OTHER_BIN='' KA_ENV=()
if [ "${BENCH_STATIC:-1}" != 0 ] && [ "$(uname -m)" = x86_64 ]; then
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --bin kube-ambassador >&2
  OTHER_BIN=$KA_BIN
  KA_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/x86_64-unknown-linux-gnu/release/kube-ambassador
  KA_BUILD="the image's (static glibc, x86_64-unknown-linux-gnu)"
  # ...run with the image's environment: the Dockerfile's glibc tunable (it says why).
  tunables=$(sed -n 's/^ENV GLIBC_TUNABLES=//p' Dockerfile)
  [ -n "$tunables" ] || die "the Dockerfile sets no GLIBC_TUNABLES"
  KA_ENV=("GLIBC_TUNABLES=$tunables")
  KA_BUILD+="; environment: GLIBC_TUNABLES=$tunables, as in the image"
fi
CLIENT=$BIN/examples/bench-client

# ---------------------------------------------------------------------------- scratch, cleanup
WORK=$(mktemp -d -t ka-bench.XXXXXX)
RAW=$WORK/raw.tsv
: >"$RAW"
FAKE_PID='' KA_PID='' KC_PID='' NG_PID='' NG_WORKER='' OTHER_PID='' PT_PID=''
# nginx daemonizes: its master (NG_PID) is not our child. TERM makes it stop its worker
# (NG_WORKER, the process measured); whatever is left after a second is killed.
stop_ng() {
  local pid _
  [ -n "$NG_PID" ] || return 0
  kill -TERM "$NG_PID" 2>/dev/null || true
  for _ in $(seq 20); do
    kill -0 "$NG_PID" 2>/dev/null || kill -0 "${NG_WORKER:-$NG_PID}" 2>/dev/null || break
    sleep 0.05
  done
  for pid in "$NG_WORKER" "$NG_PID"; do
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  NG_PID='' NG_WORKER=''
}
cleanup() {
  local pid
  stop_ng
  for pid in "$KA_PID" "$KC_PID" "$OTHER_PID" "$PT_PID" "$FAKE_PID"; do
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "${BENCH_KEEP:-}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW"; }  # round workload target metric value
note() { printf 'note\t%s\t%s\n' "$1" "$2" >>"$RAW"; log "note: $1: $2"; }

# /proc readings, in seconds or KiB.
HZ=$(getconf CLK_TCK)
cpu_of() { [ -n "${1:-}" ] && awk -v hz="$HZ" '{sub(/^.*\) /, ""); print ($12 + $13) / hz}' "/proc/$1/stat" || echo 0; }
rss_of() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# Busy CPU seconds of the whole machine (user, nice, system, irq, softirq, steal).
busy_all() { awk -v hz="$HZ" '/^cpu / {print ($2 + $3 + $4 + $7 + $8 + $9) / hz}' /proc/stat; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }

# ---------------------------------------------------------------------------- servers
log "starting the fake API server (500 pods; watch events: one a millisecond spread over $WATCHES namespaces, and one to all every $TICK_MS ms)"
start_fake "$BIN/fake-apiserver" "$WORK/fake" --pods 500 --tick-ms "$TICK_MS" --spread "$WATCHES" --quiet ||
  die "fake API server did not start"
SA=$FAKE_SA
KCFG=$FAKE_KUBECONFIG
CA=$SA/ca.crt
DIRECT=https://127.0.0.1:$FAKE_PORT

# The servers must outlive every workload; say how one died.
alive() {
  local name pid log status
  for name in fake kube-ambassador kubectl-proxy nginx nginx-worker pass-through; do
    case $name in
      fake) pid=$FAKE_PID log=$WORK/fake.log ;;
      kube-ambassador) pid=$KA_PID log=$WORK/kube-ambassador.log ;;
      kubectl-proxy) pid=$KC_PID log=$WORK/kubectl-proxy.log ;;
      nginx) pid=$NG_PID log=$WORK/nginx/error.log ;;
      # The master would replace a dead worker, but the measurements follow this one.
      nginx-worker) pid=$NG_WORKER log=$WORK/nginx/error.log ;;
      pass-through) pid=$PT_PID log=$WORK/pass-through.log ;;
    esac
    [ -z "$pid" ] && continue
    if ! kill -0 "$pid" 2>/dev/null; then
      status=0
      wait "$pid" 2>/dev/null || status=$?
      die "$name (pid $pid) died (exit status $status); the end of its log: $(tail -5 "$log")"
    fi
  done
}

url_of() {
  case $1 in
    direct | direct-h2) echo "$DIRECT" ;;
    kube-ambassador) echo "http://127.0.0.1:$PORT_KA" ;;
    kubectl-proxy) echo "http://127.0.0.1:$PORT_KC" ;;
    nginx) echo "http://127.0.0.1:$PORT_NG" ;;
    pass-through) echo "https://127.0.0.1:$PORT_PT" ;;
  esac
}
pid_of() {
  case $1 in
    direct | direct-h2) echo '' ;;
    kube-ambassador) echo "$KA_PID" ;;
    kubectl-proxy) echo "$KC_PID" ;;
    nginx) echo "$NG_WORKER" ;;
    pass-through) echo "$PT_PID" ;;
  esac
}
# Client arguments for bench-client: the direct target needs the CA and the token.
client_args() { if [ "$1" = direct ]; then echo "--ca $CA --token $TOKEN"; fi; }
# wrk's: the targets that reach the fake's TLS (direct, and through the pass-through) need the token.
wrk_auth() { case $1 in direct | direct-h2 | pass-through) echo "Authorization: Bearer $TOKEN" ;; esac; }

wait_ok() {  # URL [bench-client args]
  local i
  for i in $(seq 200); do
    # shellcheck disable=SC2086
    "$CLIENT" get --url "$1" ${2:-} >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  die "no 200 from $1"
}

# kube-ambassador in the background, in front of the fake: BINARY PORT LOG. The binary
# measured gets the image's environment (KA_ENV); `cargo build`'s (OTHER_BIN) runs as a
# workstation would run it, without.
spawn_ka() {
  local envs=()
  [ "$1" = "$KA_BIN" ] && envs=("${KA_ENV[@]}")
  env "${envs[@]}" KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT="$FAKE_PORT" \
    "$1" --service-account-dir="$SA" --port="$2" "${KA_ARGS[@]}" >>"$3" 2>&1 &
}
start_ka() {
  spawn_ka "$KA_BIN" "$PORT_KA" "$WORK/kube-ambassador.log"
  KA_PID=$!
  wait_ok "http://127.0.0.1:$PORT_KA$POD_PATH"
}
start_kc() {
  "$KUBECTL" proxy --port="$PORT_KC" --kubeconfig="$KCFG" >>"$WORK/kubectl-proxy.log" 2>&1 &
  KC_PID=$!
  wait_ok "http://127.0.0.1:$PORT_KC$POD_PATH"
}
# nginx as a minimal TLS reverse proxy: one worker (kube-ambassador's default is one
# runtime thread), keep-alive upstream connections, the token added, the fake's CA
# verified, no buffering (watches and the 256 MiB response stream through). It holds 2
# fds per watch; proxy_read_timeout must outlast any quiet period of a watch. Unbuffered,
# nginx reads at most proxy_buffer_size (one 4 KiB page by default) at a time from the
# upstream, and its keepalive_requests (1,000 by default) would close wrk's connections
# every 1,000 requests: both raised so as not to handicap it (proxy_buffers, unused
# unbuffered, only has to be at least as large for nginx to accept the configuration).
start_ng() {
  local dir=$WORK/nginx conns=$((2 * WATCHES + 512)) m temp='' _
  [ "$conns" -ge 4096 ] || conns=4096
  mkdir -p "$dir"
  # Temporary directories in the scratch directory, not /var/lib/nginx: unused here, but
  # nginx creates them at start-up, which a user other than root could not.
  for m in client_body proxy fastcgi uwsgi scgi; do
    "$NGINX" -V 2>&1 | grep -q -- "--without-http_${m}_module" ||
      temp+="  ${m}_temp_path $dir/${m}_temp;"$'\n'
  done
  cat >"$dir/nginx.conf" <<NGINX_CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections $conns; }
http {
  access_log off;
$temp  keepalive_requests 1000000;
  upstream api {
    server 127.0.0.1:$FAKE_PORT;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$PORT_NG;
    location / {
      proxy_pass https://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $TOKEN";
      proxy_ssl_trusted_certificate $CA;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_ssl_session_reuse on;
      proxy_buffering off;
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
    }
  }
}
NGINX_CONF
  "$NGINX" -c "$dir/nginx.conf" >>"$WORK/nginx.log" 2>&1 ||
    die "nginx did not start: $(tail -n 5 "$WORK/nginx.log" "$dir/error.log" 2>/dev/null)"
  for _ in $(seq 100); do [ -s "$dir/nginx.pid" ] && break; sleep 0.05; done
  NG_PID=$(cat "$dir/nginx.pid" 2>/dev/null) || die "nginx wrote no pid file: $(tail -n 5 "$dir/error.log")"
  for _ in $(seq 100); do
    NG_WORKER=$(pgrep -P "$NG_PID" -f '^nginx: worker' | head -1 || true)
    [ -n "$NG_WORKER" ] && break
    sleep 0.05
  done
  [ -n "$NG_WORKER" ] || die "no nginx worker under master $NG_PID: $(tail -n 5 "$dir/error.log")"
  wait_ok "http://127.0.0.1:$PORT_NG$POD_PATH"
}

wait_ok "$DIRECT$POD_PATH" "--ca $CA --token $TOKEN"
log "starting kube-ambassador on :$PORT_KA"
start_ka
if [ -n "$KUBECTL" ]; then
  log "starting kubectl proxy on :$PORT_KC"
  start_kc
fi
if [ -n "$NGINX" ]; then
  log "starting nginx on :$PORT_NG"
  start_ng
fi
# The TCP pass-through, in the wrk workloads only: the hop alone (examples/tcp-forward.rs).
WRK_TARGETS=("${TARGETS[@]}")
if [ "${BENCH_PASSTHROUGH:-1}" = 0 ]; then
  log "BENCH_PASSTHROUGH=0: skipping the TCP pass-through"
else
  log "starting the TCP pass-through on :$PORT_PT"
  "$BIN/examples/tcp-forward" "127.0.0.1:$PORT_PT" "127.0.0.1:$FAKE_PORT" >>"$WORK/pass-through.log" 2>&1 &
  PT_PID=$!
  wait_ok "https://127.0.0.1:$PORT_PT$POD_PATH" "--ca $CA --token $TOKEN"
  WRK_TARGETS+=(pass-through)
fi
[ -z "$H2LOAD" ] || WRK_TARGETS+=(direct-h2)

# The fake really serves 500 pods (the LIST workload's premise).
pods=$("$CLIENT" get --url "$DIRECT$LIST_PATH" --ca "$CA" --token "$TOKEN" | kv bytes /dev/stdin)
log "LIST is $pods bytes"
note "LIST" "500 pods, $pods bytes of JSON per response"

# ---------------------------------------------------------------------------- idle RSS
sleep 1
for t in "${TARGETS[@]:1}"; do
  rec 1 idle "$t" rss_kib "$(rss_of "$(pid_of "$t")")"
done
if [ -n "$OTHER_BIN" ]; then
  spawn_ka "$OTHER_BIN" "$PORT_SU" "$WORK/other.log"
  OTHER_PID=$!
  wait_ok "http://127.0.0.1:$PORT_SU$POD_PATH"
  sleep 1
  rec 1 idle-dynamic kube-ambassador rss_kib "$(rss_of "$OTHER_PID")"
  kill "$OTHER_PID"
  wait "$OTHER_PID" 2>/dev/null || true
  OTHER_PID=''
fi

rotation() {  # round target... -> the targets, starting one further each round
  local r=$1 i
  shift
  local ts=("$@") n=$#
  for ((i = 0; i < n; i++)); do echo "${ts[$(((i + r) % n))]}"; done
}

# ---------------------------------------------------------------------------- watches
# conns_to_fake PID: the ESTABLISHED TCP connections process PID holds to the fake API
# server (its sockets' inodes, from /proc/PID/fd, looked up in /proc/net/tcp).
conns_to_fake() {
  { find "/proc/$1/fd" -lname 'socket:*' -printf '%l\n' 2>/dev/null | tr -dc '0-9\n'; echo --; cat /proc/net/tcp; } |
    awk -v port=":$(printf '%04X' "$FAKE_PORT")" '
      $0 == "--" { table = 1; next }
      !table { own[$1] = 1; next }
      $4 == "01" && substr($3, length($3) - 4) == port && ($10 in own) { n++ }
      END { print n + 0 }'
}

# run_watches ROUND WORKLOAD TARGET PATH
run_watches() {
  local r=$1 w=$2 t=$3 path=$4 pid out=$WORK/watches.out m v events cpu fcpu cpid most=0 n
  alive
  log "watch round $r/$WATCH_ROUNDS ($w): $WATCHES watches held ${WATCH_SECS}s via $t"
  pid=$(pid_of "$t")
  # shellcheck disable=SC2046
  "$CLIENT" watches --url "$(url_of "$t")$path" $(client_args "$t") \
    --n "$WATCHES" --hold "$WATCH_SECS" ${pid:+--pid "$pid"} --fake-pid "$FAKE_PID" >"$out" &
  cpid=$!
  # The connections to the API server while the watches are held: the proxy's (for
  # direct, the client's own), sampled every 2 s, the most seen.
  while kill -0 "$cpid" 2>/dev/null; do
    n=$(conns_to_fake "${pid:-$cpid}")
    [ "$n" -le "$most" ] || most=$n
    sleep 2
  done
  wait "$cpid" || die "watches ($w) via $t failed: $(cat "$out")"
  rec "$r" "$w" "$t" upstream_conns "$most"
  for m in latency_p50_us latency_p99_us open_secs rss_max_kib fds events events_missing events_per_watch_min watches_failed; do
    v=$(kv "$m" "$out")
    [ -n "$v" ] && rec "$r" "$w" "$t" "$m" "$v"
  done
  events=$(kv events "$out")
  cpu=$(kv cpu_secs "$out")
  [ -n "$cpu" ] && [ "${events:-0}" -gt 0 ] && rec "$r" "$w" "$t" cpu_us_per_event "$(calc "$cpu * 1e6 / $events")"
  fcpu=$(kv fake_cpu_secs "$out")
  [ -n "$fcpu" ] && [ "${events:-0}" -gt 0 ] && rec "$r" "$w" "$t" fake_cpu_us_per_event "$(calc "$fcpu * 1e6 / $events")"
  alive
  [ "$(kv watches_failed "$out")" = 0 ] || note "watches ($w) via $t" "$(kv watches_failed "$out") failed: $(kv first_failure "$out")"
  v=$(kv events_missing "$out")  # not printed for spread events (see bench-client)
  [ "${v:-0}" = 0 ] || note "watches ($w) via $t" "$v events did not arrive"
  [ "$(kv events_per_watch_min "$out")" != 0 ] || note "watches ($w) via $t" "a watch received no event"
  log "  p50 $(kv latency_p50_us "$out") µs, p99 $(kv latency_p99_us "$out") µs${pid:+, RSS max $(kv rss_max_kib "$out") KiB}, $most connections to the API server"
  sleep 1
}

for ((r = 1; r <= WATCH_ROUNDS; r++)); do
  for t in $(rotation "$r" "${TARGETS[@]}"); do
    run_watches "$r" watches "$t" "$WATCH_PATH"
    run_watches "$r" fanout "$t" "$FANOUT_PATH"
  done
done

# ---------------------------------------------------------------------------- wrk
# run_wrk ROUND WORKLOAD TARGET THREADS CONNS PATH
run_wrk() {
  local r=$1 w=$2 t=$3 th=$4 c=$5 path=$6
  local pid hdr=() out=$WORK/wrk.out auth
  alive
  pid=$(pid_of "$t")
  auth=$(wrk_auth "$t")
  [ -n "$auth" ] && hdr=(-H "$auth")
  local p0 f0 b0 t0 p1 f1 b1 t1
  p0=$(cpu_of "$pid") f0=$(cpu_of "$FAKE_PID") b0=$(busy_all) t0=$(now)
  local TIMEFORMAT='%U %S'
  if [ "$t" = direct-h2 ]; then
    # h2load (bench/lib.sh): the same connections and length as wrk's run, one stream
    # each; "wrk" in the CPU columns is then h2load.
    { time h2load_run "$SECS" "$c" "$(url_of "$t")$path" -H "authorization: Bearer $TOKEN" >"$out" 2>&1; } 2>"$WORK/wrk.time" ||
      die "h2load $w via $t: $(cat "$out")"
  else
    { time wrk -t"$th" -c"$c" -d"${SECS}s" --timeout 10s -s "$ROOT/bench/wrk-report.lua" "${hdr[@]}" \
        "$(url_of "$t")$path" >"$out" 2>&1; } 2>"$WORK/wrk.time"
  fi
  p1=$(cpu_of "$pid") f1=$(cpu_of "$FAKE_PID") b1=$(busy_all) t1=$(now)
  local line req dur wall wrk_cpu proxy_cpu fake_cpu busy
  if [ "$t" = direct-h2 ]; then
    line=$(grep '^rps=' "$out") || die "h2load $w via $t: $(cat "$out")"
  else
    line=$(grep '^WRK ' "$out") || die "wrk $w via $t: $(cat "$out")"
  fi
  req=$(kv_of requests "$line")
  dur=$(kv_of duration_us "$line")
  [ "$req" -gt 0 ] || die "wrk $w via $t: no requests: $(cat "$out")"
  wall=$(calc "$t1 - $t0")
  wrk_cpu=$(awk '{print $1 + $2}' "$WORK/wrk.time")
  proxy_cpu=$(calc "$p1 - $p0")
  fake_cpu=$(calc "$f1 - $f0")
  busy=$(calc "$b1 - $b0")
  rec "$r" "$w" "$t" rps "$(calc "$req * 1e6 / $dur")"
  # h2load prints no percentiles: no latency rows for it.
  if [ "$t" != direct-h2 ]; then
    rec "$r" "$w" "$t" p50_us "$(kv_of p50_us "$line")"
    rec "$r" "$w" "$t" p99_us "$(kv_of p99_us "$line")"
  fi
  rec "$r" "$w" "$t" wrk_cores "$(calc "$wrk_cpu / $wall")"
  rec "$r" "$w" "$t" fake_cores "$(calc "$fake_cpu / $wall")"
  rec "$r" "$w" "$t" wrk_cpu_us_per_req "$(calc "$wrk_cpu * 1e6 / $req")"
  rec "$r" "$w" "$t" fake_cpu_us_per_req "$(calc "$fake_cpu * 1e6 / $req")"
  if [ -n "$pid" ]; then
    rec "$r" "$w" "$t" proxy_cores "$(calc "$proxy_cpu / $wall")"
    rec "$r" "$w" "$t" proxy_cpu_us_per_req "$(calc "$proxy_cpu * 1e6 / $req")"
  fi
  rec "$r" "$w" "$t" other_cores "$(calc "($busy - $wrk_cpu - $proxy_cpu - $fake_cpu) / $wall")"
  local errs
  if [ "$t" = direct-h2 ]; then
    errs=$(kv_of failed "$line")
  else
    errs=$(($(kv_of non2xx "$line") + $(kv_of errors "$line")))
  fi
  rec "$r" "$w" "$t" errors "$errs"
  [ "$errs" = 0 ] || note "$w via $t (round $r)" "$errs errors or non-2xx responses"
  log "  $w via $t: $(calc "$req * 1e6 / $dur") req/s"
}

WORKLOADS=(
  "get-c1 1 1 $POD_PATH"
  "get-c16 2 16 $POD_PATH"
  "get-c64 2 64 $POD_PATH"
  "list500-c1 1 1 $LIST_PATH"
  "list500-c16 2 16 $LIST_PATH"
)

log "warm-up"
for t in "${WRK_TARGETS[@]}"; do
  [ "$t" != direct-h2 ] || continue # the same server as direct, which warms it up
  hdr=()
  auth=$(wrk_auth "$t")
  [ -n "$auth" ] && hdr=(-H "$auth")
  wrk -t2 -c16 -d1s "${hdr[@]}" "$(url_of "$t")$POD_PATH" >/dev/null
done

for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS"
  for spec in "${WORKLOADS[@]}"; do
    read -r w th c path <<<"$spec"
    for t in $(rotation "$r" "${WRK_TARGETS[@]}"); do
      run_wrk "$r" "$w" "$t" "$th" "$c" "$path"
    done
  done

  # 256 MiB through each, RSS sampled every 2 ms.
  for t in $(rotation "$r" "${TARGETS[@]}"); do
    alive
    pid=$(pid_of "$t")
    out=$WORK/bytes.out
    # shellcheck disable=SC2046
    "$CLIENT" get --url "$(url_of "$t")$BYTES_PATH" $(client_args "$t") ${pid:+--pid "$pid"} \
      --fake-pid "$FAKE_PID" >"$out" || die "256 MiB via $t: $(cat "$out")"
    [ "$(kv bytes "$out")" = 268435456 ] || note "256 MiB via $t" "only $(kv bytes "$out") bytes arrived"
    for m in mib_per_s rss_growth_kib cpu_secs fake_cpu_secs; do
      v=$(kv "$m" "$out")
      [ -n "$v" ] && rec "$r" bytes256 "$t" "$m" "$v"
    done
    log "  256 MiB via $t: $(kv mib_per_s "$out") MiB/s${pid:+, RSS +$(kv rss_growth_kib "$out") KiB}"
  done

  # Start-up to the first 200, each proxy spawned afresh on another port.
  for ((s = 1; s <= STARTUPS; s++)); do
    for t in $(rotation "$r" "${TARGETS[@]}"); do
      out=$WORK/startup.out
      case $t in
        # nginx daemonizes, and its start-up is not what it is here for.
        direct | nginx) continue ;;
        kube-ambassador)
          env "${KA_ENV[@]}" KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT="$FAKE_PORT" \
            "$CLIENT" startup --url "http://127.0.0.1:$PORT_SU$POD_PATH" -- \
            "$KA_BIN" --service-account-dir="$SA" --port="$PORT_SU" "${KA_ARGS[@]}" >"$out" ;;
        kubectl-proxy)
          "$CLIENT" startup --url "http://127.0.0.1:$PORT_SU$POD_PATH" -- \
            "$KUBECTL" proxy --port="$PORT_SU" --kubeconfig="$KCFG" >"$out" ;;
      esac || die "start-up of $t: $(cat "$out")"
      rec "$r" startup "$t" startup_ms "$(kv startup_ms "$out")"
      log "  start-up of $t: $(kv startup_ms "$out") ms"
    done
  done
done

sleep 2
alive
for t in "${TARGETS[@]:1}"; do
  rec 1 after "$t" rss_kib "$(rss_of "$(pid_of "$t")")"
done

# ---------------------------------------------------------------------------- report
stop_ng
kill -KILL "$KA_PID" ${KC_PID:+"$KC_PID"} ${PT_PID:+"$PT_PID"} "$FAKE_PID" 2>/dev/null || true
wait 2>/dev/null || true
PT_RAN=$PT_PID
KA_PID='' KC_PID='' PT_PID='' FAKE_PID=''

MACHINE=$WORK/machine.md
{
  echo "# kube-ambassador vs kubectl proxy: benchmark results"
  echo
  echo "Generated by \`bench/run.sh\` (see \`bench/README.md\` for what each row measures). The soak (10 minutes of mixed load with faults: failures by cause, watch events expected and received, memory over time) is \`bench/soak.sh\`, its report \`bench/soak.md\`."
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: $(nproc) CPUs ($(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "- load average before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows here and in the \"other cores\" column)"
  echo "- kube-ambassador: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes in src/'), $(rustc --version); binary: $KA_BUILD"
  if [ -n "$KUBECTL" ]; then
    echo "- kubectl: $("$KUBECTL" version --client 2>/dev/null | head -1)"
  else
    echo "- kubectl: not installed, its column is empty"
  fi
  if [ -n "$NGINX" ]; then
    echo "- nginx (reference reverse proxy: one worker, keep-alive TLS upstream, no buffering): $("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
  else
    echo "- nginx: not run, its column is empty"
  fi
  if [ -n "$PT_RAN" ]; then
    echo "- TCP pass-through (the hop alone: copies bytes, one thread; the wrk workloads only): examples/tcp-forward.rs"
  else
    echo "- TCP pass-through: not run, its column is empty"
  fi
  echo "- wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
  if [ -n "$H2LOAD" ]; then
    echo "- direct HTTP/2 (the wrk workloads only; no latency percentiles): $(h2load --version | head -1), one stream per connection"
  else
    echo "- direct HTTP/2: h2load not installed, its column is empty"
  fi
  # shellcheck disable=SC2016 # the quotes are literal, inside a double-quoted string
  echo "- settings: BENCH_SECONDS=$SECS BENCH_ROUNDS=$ROUNDS BENCH_WATCHES=$WATCHES BENCH_WATCH_SECONDS=$WATCH_SECS BENCH_WATCH_ROUNDS=$WATCH_ROUNDS BENCH_STARTUPS=$STARTUPS BENCH_TICK_MS=$TICK_MS${BENCH_KA_ARGS:+ BENCH_KA_ARGS='$BENCH_KA_ARGS'}"
  echo "- all on one machine: the load generator, the proxy and the fake API server share the CPUs"
} >"$MACHINE"

mkdir -p "$(dirname "$OUT")"
"$CLIENT" report "$RAW" "$MACHINE" >"$OUT"
cp "$RAW" "$RAW_OUT"
cat "$OUT"
log "wrote $OUT (raw samples: $RAW_OUT)"
