#!/usr/bin/env bash
# Benchmark: a direct TLS client vs kube-ambassador vs `kubectl proxy`, in front of the fake
# API server, on this machine, in one run. See bench/README.md.
#
#   bench/run.sh                     # about 5 minutes (after the release build)
#   BENCH_SECONDS=10 bench/run.sh    # longer wrk runs
#
# Settings (environment):
#   BENCH_SECONDS=3        seconds per wrk run
#   BENCH_ROUNDS=3         rounds of the wrk, 256 MiB and start-up workloads (median reported)
#   BENCH_WATCHES=1000     concurrent watches in the watch workload
#   BENCH_WATCH_SECONDS=20 how long they are held
#   BENCH_WATCH_ROUNDS=1   rounds of the watch workload
#   BENCH_STARTUPS=2       start-up measurements per proxy per round
#   BENCH_TICK_MS=100      watch event period of the fake API server
#   BENCH_PORT_BASE=18001  kube-ambassador on BASE, kubectl proxy on BASE+1, start-ups on BASE+10
#   BENCH_OUT=bench/results.md   the report (the raw samples go beside it as .tsv)
#   BENCH_KEEP=1           keep the scratch directory (logs of all three servers)
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
PORT_SU=$((PORT_BASE + 10))
OUT=${BENCH_OUT:-bench/results.md}
read -r -a KA_ARGS <<<"${BENCH_KA_ARGS:-}"
RAW_OUT=${OUT%.md}.tsv
TOKEN=demo-token
POD_PATH=/api/v1/namespaces/default/pods/pod-0
LIST_PATH=/api/v1/namespaces/default/pods
BYTES_PATH='/bytes?n=268435456'
WATCH_PATH='/api/v1/namespaces/bench-ticks/pods?watch=1&resourceVersion=1'

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
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
KUBECTL=$(command -v kubectl || true)
TARGETS=(direct kube-ambassador)
if [ -n "$KUBECTL" ]; then
  TARGETS+=(kubectl-proxy)
else
  log "kubectl not found: skipping the kubectl proxy target"
fi

# More file descriptors: 1,000 watches through a proxy are 2,000 sockets in it.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((2 * WATCHES + 256)) ]; then
  log "open-file limit $(ulimit -n) is too low for $WATCHES watches"
  WATCHES=$(( ($(ulimit -n) - 256) / 2 ))
  log "using $WATCHES watches"
fi

log "building release binaries"
cargo build --release --locked --bin kube-ambassador --example fake-apiserver --example bench-client >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
CLIENT=$BIN/examples/bench-client

# ---------------------------------------------------------------------------- scratch, cleanup
WORK=$(mktemp -d -t ka-bench.XXXXXX)
RAW=$WORK/raw.tsv
: >"$RAW"
FAKE_PID='' KA_PID='' KC_PID=''
cleanup() {
  local pid
  for pid in "$KA_PID" "$KC_PID" "$FAKE_PID"; do
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
kv() { sed -n "s/^$1=//p" "$2" | head -1; }  # value of key=value line in a file

# ---------------------------------------------------------------------------- servers
log "starting the fake API server (500 pods, a watch event every $TICK_MS ms)"
"$BIN/examples/fake-apiserver" --dir "$WORK/fake" --pods 500 --tick-ms "$TICK_MS" --quiet \
  >"$WORK/fake.env" 2>"$WORK/fake.log" &
FAKE_PID=$!
for _ in $(seq 100); do grep -q '^KUBECONFIG=' "$WORK/fake.env" 2>/dev/null && break; sleep 0.1; done
grep -q '^KUBECONFIG=' "$WORK/fake.env" || die "fake API server did not start: $(cat "$WORK/fake.log")"
FAKE_PORT=$(kv KUBERNETES_SERVICE_PORT "$WORK/fake.env")
SA=$(kv SERVICE_ACCOUNT_DIR "$WORK/fake.env")
KCFG=$(kv KUBECONFIG "$WORK/fake.env")
CA=$SA/ca.crt
DIRECT=https://127.0.0.1:$FAKE_PORT

# The three servers must outlive every workload; say how one died.
alive() {
  local name pid log status
  for name in fake kube-ambassador kubectl-proxy; do
    case $name in
      fake) pid=$FAKE_PID log=$WORK/fake.log ;;
      kube-ambassador) pid=$KA_PID log=$WORK/kube-ambassador.log ;;
      kubectl-proxy) pid=$KC_PID log=$WORK/kubectl-proxy.log ;;
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
    direct) echo "$DIRECT" ;;
    kube-ambassador) echo "http://127.0.0.1:$PORT_KA" ;;
    kubectl-proxy) echo "http://127.0.0.1:$PORT_KC" ;;
  esac
}
pid_of() {
  case $1 in
    direct) echo '' ;;
    kube-ambassador) echo "$KA_PID" ;;
    kubectl-proxy) echo "$KC_PID" ;;
  esac
}
# Client arguments for bench-client: the direct target needs the CA and the token.
client_args() { if [ "$1" = direct ]; then echo "--ca $CA --token $TOKEN"; fi; }

wait_ok() {  # URL [bench-client args]
  local i
  for i in $(seq 200); do
    # shellcheck disable=SC2086
    "$CLIENT" get --url "$1" ${2:-} >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  die "no 200 from $1"
}

start_ka() {
  KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT=$FAKE_PORT \
    "$BIN/kube-ambassador" --service-account-dir="$SA" --port="$PORT_KA" "${KA_ARGS[@]}" >>"$WORK/kube-ambassador.log" 2>&1 &
  KA_PID=$!
  wait_ok "http://127.0.0.1:$PORT_KA$POD_PATH"
}
start_kc() {
  "$KUBECTL" proxy --port="$PORT_KC" --kubeconfig="$KCFG" >>"$WORK/kubectl-proxy.log" 2>&1 &
  KC_PID=$!
  wait_ok "http://127.0.0.1:$PORT_KC$POD_PATH"
}

wait_ok "$DIRECT$POD_PATH" "--ca $CA --token $TOKEN"
log "starting kube-ambassador on :$PORT_KA"
start_ka
if [ -n "$KUBECTL" ]; then
  log "starting kubectl proxy on :$PORT_KC"
  start_kc
fi

# The fake really serves 500 pods (the LIST workload's premise).
pods=$("$CLIENT" get --url "$DIRECT$LIST_PATH" --ca "$CA" --token "$TOKEN" | kv bytes /dev/stdin)
log "LIST is $pods bytes"
note "LIST" "500 pods, $pods bytes of JSON per response"

# ---------------------------------------------------------------------------- idle RSS
sleep 1
for t in "${TARGETS[@]:1}"; do
  rec 1 idle "$t" rss_kib "$(rss_of "$(pid_of "$t")")"
done

rotation() {  # round -> the targets, starting one further each round
  local r=$1 n=${#TARGETS[@]} i
  for ((i = 0; i < n; i++)); do echo "${TARGETS[$(((i + r) % n))]}"; done
}

# ---------------------------------------------------------------------------- watches
for ((r = 1; r <= WATCH_ROUNDS; r++)); do
  for t in $(rotation "$r"); do
    alive
    log "watch round $r/$WATCH_ROUNDS: $WATCHES watches held ${WATCH_SECS}s via $t"
    pid=$(pid_of "$t")
    out=$WORK/watches.out
    # shellcheck disable=SC2046
    "$CLIENT" watches --url "$(url_of "$t")$WATCH_PATH" $(client_args "$t") \
      --n "$WATCHES" --hold "$WATCH_SECS" ${pid:+--pid "$pid"} --fake-pid "$FAKE_PID" >"$out" ||
      die "watches via $t failed: $(cat "$out")"
    for m in latency_p50_us latency_p99_us open_secs rss_max_kib fds events events_missing watches_failed; do
      v=$(kv "$m" "$out")
      [ -n "$v" ] && rec "$r" watches "$t" "$m" "$v"
    done
    events=$(kv events "$out")
    cpu=$(kv cpu_secs "$out")
    [ -n "$cpu" ] && [ "${events:-0}" -gt 0 ] && rec "$r" watches "$t" cpu_us_per_event "$(calc "$cpu * 1e6 / $events")"
    fcpu=$(kv fake_cpu_secs "$out")
    [ -n "$fcpu" ] && [ "${events:-0}" -gt 0 ] && rec "$r" watches "$t" fake_cpu_us_per_event "$(calc "$fcpu * 1e6 / $events")"
    alive
    [ "$(kv watches_failed "$out")" = 0 ] || note "watches via $t" "$(kv watches_failed "$out") failed: $(kv first_failure "$out")"
    [ "$(kv events_missing "$out")" = 0 ] || note "watches via $t" "$(kv events_missing "$out") events did not arrive"
    log "  p50 $(kv latency_p50_us "$out") µs, p99 $(kv latency_p99_us "$out") µs${pid:+, RSS max $(kv rss_max_kib "$out") KiB}"
    sleep 1
  done
done

# ---------------------------------------------------------------------------- wrk
# run_wrk ROUND WORKLOAD TARGET THREADS CONNS PATH
run_wrk() {
  local r=$1 w=$2 t=$3 th=$4 c=$5 path=$6
  local pid hdr=() out=$WORK/wrk.out
  alive
  pid=$(pid_of "$t")
  [ "$t" = direct ] && hdr=(-H "Authorization: Bearer $TOKEN")
  local p0 f0 b0 t0 p1 f1 b1 t1
  p0=$(cpu_of "$pid") f0=$(cpu_of "$FAKE_PID") b0=$(busy_all) t0=$(now)
  local TIMEFORMAT='%U %S'
  { time wrk -t"$th" -c"$c" -d"${SECS}s" --timeout 10s -s "$ROOT/bench/wrk-report.lua" "${hdr[@]}" \
      "$(url_of "$t")$path" >"$out" 2>&1; } 2>"$WORK/wrk.time"
  p1=$(cpu_of "$pid") f1=$(cpu_of "$FAKE_PID") b1=$(busy_all) t1=$(now)
  local line req dur wall wrk_cpu proxy_cpu fake_cpu busy
  line=$(grep '^WRK ' "$out") || die "wrk $w via $t: $(cat "$out")"
  req=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
  dur=$(sed 's/.*duration_us=\([0-9]*\).*/\1/' <<<"$line")
  [ "$req" -gt 0 ] || die "wrk $w via $t: no requests: $(cat "$out")"
  wall=$(calc "$t1 - $t0")
  wrk_cpu=$(awk '{print $1 + $2}' "$WORK/wrk.time")
  proxy_cpu=$(calc "$p1 - $p0")
  fake_cpu=$(calc "$f1 - $f0")
  busy=$(calc "$b1 - $b0")
  rec "$r" "$w" "$t" rps "$(calc "$req * 1e6 / $dur")"
  rec "$r" "$w" "$t" p50_us "$(sed 's/.*p50_us=\([0-9]*\).*/\1/' <<<"$line")"
  rec "$r" "$w" "$t" p99_us "$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$line")"
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
  errs=$(sed 's/.*non2xx=\([0-9]*\) errors=\([0-9]*\).*/\1 \2/' <<<"$line" | awk '{print $1 + $2}')
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
for t in "${TARGETS[@]}"; do
  hdr=()
  [ "$t" = direct ] && hdr=(-H "Authorization: Bearer $TOKEN")
  wrk -t2 -c16 -d1s "${hdr[@]}" "$(url_of "$t")$POD_PATH" >/dev/null
done

for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS"
  for spec in "${WORKLOADS[@]}"; do
    read -r w th c path <<<"$spec"
    for t in $(rotation "$r"); do
      run_wrk "$r" "$w" "$t" "$th" "$c" "$path"
    done
  done

  # 256 MiB through each, RSS sampled every 2 ms.
  for t in $(rotation "$r"); do
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
    for t in $(rotation "$r"); do
      out=$WORK/startup.out
      case $t in
        direct) continue ;;
        kube-ambassador)
          KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT=$FAKE_PORT \
            "$CLIENT" startup --url "http://127.0.0.1:$PORT_SU$POD_PATH" -- \
            "$BIN/kube-ambassador" --service-account-dir="$SA" --port="$PORT_SU" "${KA_ARGS[@]}" >"$out" ;;
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
kill -KILL "$KA_PID" ${KC_PID:+"$KC_PID"} "$FAKE_PID" 2>/dev/null || true
wait 2>/dev/null || true
KA_PID='' KC_PID='' FAKE_PID=''

MACHINE=$WORK/machine.md
{
  echo "# kube-ambassador vs kubectl proxy: benchmark results"
  echo
  echo "Generated by \`bench/run.sh\` (see \`bench/README.md\` for what each row measures)."
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- machine: $(nproc) CPUs ($(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), kernel $(uname -r)"
  echo "- load average before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows here and in the \"other cores\" column)"
  echo "- kube-ambassador: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' with uncommitted changes in src/'), $(rustc --version)"
  if [ -n "$KUBECTL" ]; then
    echo "- kubectl: $("$KUBECTL" version --client 2>/dev/null | head -1)"
  else
    echo "- kubectl: not installed, its column is empty"
  fi
  echo "- wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
  echo "- settings: BENCH_SECONDS=$SECS BENCH_ROUNDS=$ROUNDS BENCH_WATCHES=$WATCHES BENCH_WATCH_SECONDS=$WATCH_SECS BENCH_WATCH_ROUNDS=$WATCH_ROUNDS BENCH_STARTUPS=$STARTUPS BENCH_TICK_MS=$TICK_MS${BENCH_KA_ARGS:+ BENCH_KA_ARGS='$BENCH_KA_ARGS'}"
  echo "- all on one machine: the load generator, the proxy and the fake API server share the CPUs"
} >"$MACHINE"

mkdir -p "$(dirname "$OUT")"
"$CLIENT" report "$RAW" "$MACHINE" >"$OUT"
cp "$RAW" "$RAW_OUT"
cat "$OUT"
log "wrote $OUT (raw samples: $RAW_OUT)"
