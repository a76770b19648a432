#!/usr/bin/env bash
# Runs README.md's "Try it without a cluster" recipe exactly as written: the blocks after
# the `<!-- try-it:... -->` markers are extracted and fed to shells the way a user pastes
# them. Terminal 1 is one bash reading its commands from a pipe (so that `kill %1 %2`,
# pasted after Ctrl-C, finds the jobs the first block started); terminal 2 is another.
# Checks that the pod list comes through, that the watch prints the ADDED event terminal
# 2 causes, and that both servers stop. Needs curl, and ports 6443 and 8001 free.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The ```sh block that follows the marker line `<!-- try-it:NAME ...-->`.
block() {
  awk -v marker="<!-- try-it:$1 " -v bare="<!-- try-it:$1 -->" '
    index($0, marker) == 1 || $0 == bare { found = 1; next }
    found && /^```sh$/ { inside = 1; next }
    inside && /^```$/ { exit }
    inside { print }
  ' README.md
}
t1=$(block terminal-1)
t2=$(block terminal-2)
stop=$(block terminal-1-stop)
for b in t1 t2 stop; do
  [[ -n ${!b} ]] || { echo "try-it: README.md has no $b block" >&2; exit 1; }
done

work=$(mktemp -d)
shell=""
cleanup() {
  exec 3>&- 2>/dev/null || true
  if [[ -n $shell ]]; then kill "$shell" 2>/dev/null || true; fi
  rm -rf "$work" /tmp/ka-demo
}
trap cleanup EXIT
rm -rf /tmp/ka-demo

# Waits (bounded) until FILE contains the fixed string TEXT.
wait_for() {
  local file=$1 text=$2 limit=${3:-600}
  for _ in $(seq "$((limit * 10))"); do
    grep -qF -- "$text" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "try-it: $file never showed $text within ${limit}s; it holds:" >&2
  cat "$file" >&2
  echo "--- terminal 1's stderr:" >&2
  cat "$work/t1.err" >&2
  exit 1
}

mkfifo "$work/t1.in"
# A command started with `&` from a script has SIGINT ignored, and so would everything it
# runs; env puts it back, so that Ctrl-C (SIGINT) ends the watch as it does at a terminal.
env --default-signal=INT bash <"$work/t1.in" >"$work/t1.out" 2>"$work/t1.err" &
shell=$!
exec 3>"$work/t1.in"
printf '%s\n' "$t1" >&3

# The first build may take minutes; then the pod list, then the watch is open.
wait_for "$work/t1.out" '"kind":"PodList"'
wait_for "$work/t1.err" 'watch=1'
bash -c "$t2" >"$work/t2.out" 2>&1
grep -qF '"name":"demo"' "$work/t2.out" || { echo "try-it: terminal 2 got: $(cat "$work/t2.out")" >&2; exit 1; }
wait_for "$work/t1.out" '"type":"ADDED"' 30
grep '"type":"ADDED"' "$work/t1.out" | grep -qF '"name":"demo"' \
  || { echo "try-it: no ADDED event for demo in: $(cat "$work/t1.out")" >&2; exit 1; }

# Ctrl-C in terminal 1: SIGINT to the foreground curl, then the stop line.
curl_pid=$(pgrep -P "$shell" -x curl || true)
[[ -n $curl_pid ]] || { echo "try-it: the watch (curl -N) is not running" >&2; exit 1; }
kill -INT "$curl_pid"
printf '%s\n' "$stop" >&3
exec 3>&-
for _ in $(seq 300); do kill -0 "$shell" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$shell" 2>/dev/null; then
  echo "try-it: terminal 1 did not finish after '$stop'" >&2; ps -o pid,ppid,stat,args --ppid "$shell" >&2 || true; tail -5 "$work/t1.err" >&2
  exit 1
fi
shell=""
for port in 6443 8001; do
  for _ in $(seq 100); do
    curl -s -o /dev/null "localhost:$port" 2>/dev/null || break
    sleep 0.1
  done
  if curl -s -o /dev/null "localhost:$port" 2>/dev/null; then
    echo "try-it: something still serves on port $port after '$stop'" >&2
    exit 1
  fi
done
echo "try-it: README.md's recipe ran as written: pod list, watch event, both stopped"
