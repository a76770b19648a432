#!/usr/bin/env bash
# Proves the container image's premise without a Docker engine: the static binary the
# Dockerfile builds runs in an empty root (a chroot holding only the binary and a
# kubelet-style service-account directory), as uid 65532, against the fake API server,
# needing no file from a base image. Needs root (chroot); skips with a reason otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]] || ! command -v chroot >/dev/null; then
  echo "static-root: skipped (needs root and chroot)"
  exit 0
fi

target=x86_64-unknown-linux-gnu
# Cargo puts its output under CARGO_TARGET_DIR when that is set (a shared build cache).
target_dir="${CARGO_TARGET_DIR:-target}"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$target" --bin kube-ambassador
cargo build --locked -p fake-apiserver
bin="$target_dir/$target/release/kube-ambassador"
fake="$target_dir/debug/fake-apiserver"
for built in "$bin" "$fake"; do
  if [[ ! -x "$built" ]]; then
    echo "static-root: $built was not built (is CARGO_TARGET_DIR or the build's target what this script expects?)" >&2
    exit 1
  fi
done
# grep without -q reads all of readelf's output: an early exit would SIGPIPE it under pipefail.
if readelf -lW "$bin" | grep 'program interpreter' >/dev/null; then
  echo "static-root: $bin is dynamically linked" >&2
  exit 1
fi
# build.rs packs the relocations (DT_RELR) where the glibc linked against knows them
# (2.36 and later): then the binary must carry them, or the link tuning was lost.
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc 2\.\([0-9]*\).*/\1/p')
if [[ -n "$glibc" && "$glibc" -ge 36 ]] && ! readelf -dW "$bin" | grep '(RELR)' >/dev/null; then
  echo "static-root: $bin has no DT_RELR relocations: build.rs's link tuning was not applied" >&2
  exit 1
fi

work=$(mktemp -d)
root="$work/root"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$fake" --dir "$work/api" >"$work/api.out" 2>"$work/api.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^SERVICE_ACCOUNT_DIR=' "$work/api.out" 2>/dev/null && break; sleep 0.1; done
# shellcheck disable=SC1090
eval "$(grep -E '^KUBERNETES_SERVICE_(HOST|PORT)=' "$work/api.out" | sed 's/^/export /')"

# The empty root: the binary, and the service account where the kubelet mounts it
# (symlinks and all, as the atomic writer lays them out). Nothing else.
mkdir -p "$root/var/run/secrets/kubernetes.io"
cp "$bin" "$root/kube-ambassador"
cp -a "$work/api/serviceaccount" "$root/var/run/secrets/kubernetes.io/serviceaccount"
chmod -R a+rX "$root"
echo "static-root: files in the root:"
(cd "$root" && find . -mindepth 1 | sort | sed 's/^/  /')

# The image's environment: the Dockerfile's ENV GLIBC_TUNABLES (it says why). glibc
# ignores a tunable it does not know without a word, so each one set must be in the list
# of the glibc the binary was linked against (this machine's: ld.so --list-tunables).
tunables=$(sed -n 's/^ENV GLIBC_TUNABLES=//p' Dockerfile)
if [[ -n "$tunables" ]]; then
  if known=$(/lib64/ld-linux-x86-64.so.2 --list-tunables 2>/dev/null) && [[ -n "$known" ]]; then
    IFS=: read -ra settings <<<"$tunables"
    for setting in "${settings[@]}"; do
      name=${setting%%=*}
      if ! grep -q "^$name:" <<<"$known"; then
        echo "static-root: the Dockerfile sets $name, which this glibc does not know" >&2
        exit 1
      fi
      echo "static-root: glibc tunable $setting (known to this glibc)"
    done
  else
    echo "static-root: ld.so --list-tunables is not available: the Dockerfile's tunables were not checked"
  fi
fi

GLIBC_TUNABLES=$tunables chroot --userspec=65532:65532 "$root" /kube-ambassador --port=0 --shutdown-delay=0s \
  >"$work/proxy.out" 2>"$work/proxy.err" &
proxy=$!
pids+=("$proxy")
for _ in $(seq 100); do grep -q '^Starting to serve on ' "$work/proxy.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^Starting to serve on //p' "$work/proxy.out")
if [[ -z "$addr" ]]; then
  echo "static-root: the proxy did not start" >&2
  cat "$work/proxy.err" >&2
  exit 1
fi
body=$(curl -sf "http://$addr/api/v1/namespaces/default/pods")
grep -q '"kind":"PodList"' <<<"$body" || { echo "static-root: unexpected answer: $body" >&2; exit 1; }
# For the record (not a pass/fail criterion: memory is the benchmark's business).
rss=$(awk '/^VmRSS:/ {print $2 " " $3}' "/proc/$proxy/status" 2>/dev/null || true)
echo "static-root: resident after one request: ${rss:-unknown}"
kill -TERM "$proxy"
status=0
wait "$proxy" || status=$?
if [[ $status -ne 0 ]]; then
  echo "static-root: exit status $status after SIGTERM" >&2
  cat "$work/proxy.err" >&2
  exit 1
fi
echo "static-root: ok: $(stat -c %s "$bin") bytes, served a PodList from an empty root as 65532, exited 0 on SIGTERM"
