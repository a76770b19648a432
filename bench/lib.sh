# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced, not run): one way to call h2load
# and read its summary, so that every script that has a direct HTTP/2 client counts
# its failures the same way, and one way to start the fake API server and wait for it.

# h2load_run SECONDS CONNS URL [h2load flags...]: one h2load run of SECONDS with CONNS
# connections, one stream each (-m1: a client-go request at a time per connection, the
# way a direct HTTP/2 client is compared with wrk's connections), at most 2 threads.
# Prints one line: "rps=R requests=N duration_us=D failed=F", where N counts the
# requests done and F h2load's "failed": the non-2xx responses (checked: 20 401s are
# "0 succeeded, 20 failed") and the streams that errored (a subset of failed), so a 401
# is a failure as it is in wrk's non2xx. Returns non-zero, with h2load's output on
# stderr, if it printed no summary.
h2load_run() {
  local secs=$1 conns=$2 url=$3 out rate done_n failed threads
  shift 3
  threads=$((conns < 2 ? conns : 2))
  out=$(h2load -D "$secs" -c "$conns" -m 1 -t "$threads" "$@" "$url" 2>&1) || true
  rate=$(sed -n 's/.*finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' <<<"$out")
  if [ -z "$rate" ]; then
    printf '%s\n' "$out" >&2
    return 1
  fi
  done_n=$(sed -n 's/^requests: .* \([0-9]*\) done,.*/\1/p' <<<"$out")
  failed=$(sed -n 's/^requests: .* \([0-9]*\) failed,.*/\1/p' <<<"$out")
  printf 'rps=%s requests=%s duration_us=%s failed=%s\n' "$rate" "${done_n:-0}" "$((secs * 1000000))" "${failed:-0}"
}

# kv KEY FILE: the value of the first KEY=value line in FILE.
kv() { sed -n "s/^$1=//p" "$2" | head -1; }

# kv_of KEY LINE: the value of KEY=value in a line of space-separated pairs.
kv_of() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" <<<"$2"; }

# start_fake BIN DIR [fake flags...]: starts the fake API server BIN in the background
# with its state in DIR (made afresh), its env file in DIR.env and its log in DIR.log,
# and waits (up to 30 s) until the env file names its port, service-account directory
# and kubeconfig. Sets FAKE_PID (for the caller's cleanup list), FAKE_PORT, FAKE_SA and
# FAKE_KUBECONFIG. Returns non-zero, with the fake's log on stderr, if it did not start.
# Not to be called in a subshell ($(...)): FAKE_PID must be this shell's child.
start_fake() {
  local bin=$1 dir=$2 ready=0
  shift 2
  rm -rf "$dir"
  "$bin" --dir "$dir" "$@" >"$dir.env" 2>"$dir.log" &
  FAKE_PID=$!
  for _ in $(seq 300); do
    ready=$(grep -c '^\(KUBECONFIG\|KUBERNETES_SERVICE_PORT\|SERVICE_ACCOUNT_DIR\)=' "$dir.env" || true)
    [ "$ready" = 3 ] && break
    kill -0 "$FAKE_PID" 2>/dev/null || break
    sleep 0.1
  done
  FAKE_PORT=$(kv KUBERNETES_SERVICE_PORT "$dir.env")
  FAKE_SA=$(kv SERVICE_ACCOUNT_DIR "$dir.env")
  FAKE_KUBECONFIG=$(kv KUBECONFIG "$dir.env")
  if [ "$ready" != 3 ]; then
    echo "the fake API server did not start: $(cat "$dir.log")" >&2
    return 1
  fi
}
