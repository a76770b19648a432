#!/usr/bin/env bash
# What one small GET costs the proxy, counted rather than timed: instructions (valgrind
# --tool=callgrind) and syscalls (strace -f -c), so that two builds can be compared on a
# busy machine where CPU time is noise.
#
#   bench/cost.sh
#   COST_BIN=/tmp/old-kube-ambassador bench/cost.sh        # another build, same method
#   COST_N=2000 COST_ARGS=--access-log bench/cost.sh
#   COST_N=40 COST_PODS=500 COST_PATH=/api/v1/namespaces/default/pods bench/cost.sh   # LISTs
#
# For each of 1 and 16 client connections, and for each counter, the release proxy is
# started in front of the fake API server (in-cluster mode, as bench/run.sh runs it),
# sent COST_N GETs of one pod with curl (one config file of URLs, reused keep-alive
# connections; -Z --parallel-max 16 for 16), stopped with SIGINT (no drain delay) so that
# the counter writes its totals, then started again and sent 2 x COST_N. Printed:
# (cost(2N) - cost(N)) / N, so that start-up, TLS handshakes to the API server and the
# shutdown cancel out and what is left is the cost per GET.
#
# COST_PROFILE  cargo profile built and measured (release)
# COST_BIN      binary to measure instead (nothing is built for it)
# COST_ARGS     extra proxy flags (word-split)
# COST_N        GETs in the short run (1000)
# COST_PATH     what each GET asks for (/api/v1/namespaces/default/pods/pod-0)
# COST_PODS     pods the fake API server holds (10; 500 makes the LIST above ~0.5 MB)
# COST_KEEP=1   keep the scratch directory (callgrind.out.* for callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${COST_PROFILE:-release}
N=${COST_N:-1000}
PORT=${COST_PORT:-18201}
TD=${CARGO_TARGET_DIR:-target}
dir=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
for tool in valgrind strace curl; do
  command -v "$tool" >/dev/null || { echo "cost: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done
if [ -z "${COST_BIN:-}" ]; then
  cargo build --profile "$PROFILE" --locked --bin kube-ambassador >&2
  BIN=$TD/$dir/kube-ambassador
else
  BIN=$COST_BIN
fi
cargo build --profile "$PROFILE" --locked --workspace --bin fake-apiserver >&2
FAKE=$TD/$dir/fake-apiserver
read -r -a extra <<<"${COST_ARGS:-}"
unset HTTP_PROXY HTTPS_PROXY ALL_PROXY http_proxy https_proxy all_proxy NO_PROXY no_proxy

work=$(mktemp -d -t ka-cost.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${COST_KEEP:-}" = 1 ]; then echo "cost: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. bench/lib.sh
start_fake "$FAKE" "$work/fake" --pods "${COST_PODS:-10}" --quiet || exit 1
pids+=("$FAKE_PID")
fake_port=$FAKE_PORT
sa=$FAKE_SA
URL=http://127.0.0.1:$PORT${COST_PATH:-/api/v1/namespaces/default/pods/pod-0}

# urls COUNT FILE: a curl config file of COUNT GETs, each body thrown away.
urls() { for _ in $(seq "$1"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$URL"; done >"$2"; }
urls "$N" "$work/n.cfg"
urls $((2 * N)) "$work/2n.cfg"

# run TOOL CONNS CFG OUT: the proxy under TOOL (callgrind or strace), one warm-up GET
# (retried until it listens), the config's GETs, SIGINT, and the tool's output in OUT.
run() {
  local tool=$1 conns=$2 cfg=$3 out=$4 wrapper p
  case $tool in
    callgrind) wrapper=(valgrind --tool=callgrind --callgrind-out-file="$out" --quiet) ;;
    strace) wrapper=(strace -f -c -o "$out") ;;
  esac
  env KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT="$fake_port" \
    "${wrapper[@]}" "$BIN" --service-account-dir="$sa" --port="$PORT" "${extra[@]}" \
    >"$work/ka.log" 2>&1 &
  p=$!
  pids+=("$p")
  for _ in $(seq 600); do
    curl -sf -o /dev/null "$URL" && break
    sleep 0.1
  done
  if [ "$conns" = 1 ]; then
    curl -sf -K "$cfg"
  else
    curl -sf --no-progress-meter -Z --parallel-max "$conns" -K "$cfg"
  fi
  # The proxy is the wrapper's child (strace) or the wrapper itself (valgrind).
  local target=$p child
  child=$(pgrep -P "$p" || true)
  [ -z "$child" ] || target=$child
  kill -INT "$target"
  wait "$p" || true
}

# callgrind's total instructions (its "summary:" line).
ir() { sed -n 's/^summary: *\([0-9]*\).*/\1/p' "$1"; }
# strace -c's table as "name calls" lines.
calls() { awk '$NF != "syscall" && $NF != "total" && $1 ~ /^[0-9.]+$/ { print $NF, $4 }' "$1"; }

printf '%-5s | %12s | %9s | %s\n' conns 'instr/GET' 'sysc/GET' 'syscalls/GET by name (top 6)'
for conns in 1 16; do
  run callgrind "$conns" "$work/n.cfg" "$work/cg.$conns.n"
  run callgrind "$conns" "$work/2n.cfg" "$work/cg.$conns.2n"
  run strace "$conns" "$work/n.cfg" "$work/st.$conns.n"
  run strace "$conns" "$work/2n.cfg" "$work/st.$conns.2n"
  instr=$(( ($(ir "$work/cg.$conns.2n") - $(ir "$work/cg.$conns.n")) / N ))
  # Per name: (calls at 2N - calls at N) / N, the largest first.
  by_name=$(join -a1 -a2 -e 0 -o 0,1.2,2.2 \
    <(calls "$work/st.$conns.2n" | sort) <(calls "$work/st.$conns.n" | sort) |
    awk -v n="$N" '{ d = ($2 - $3) / n; if (d > 0.005) printf "%s %.2f\n", $1, d }' | sort -k2 -rn)
  total=$(awk '{ s += $2 } END { printf "%.2f", s }' <<<"$by_name")
  top=$(head -6 <<<"$by_name" | awk '{ printf "%s%s %s", sep, $1, $2; sep = ", " }')
  printf '%-5s | %12s | %9s | %s\n' "$conns" "$instr" "$total" "$top"
done
