#!/usr/bin/env bash
# Offline checks of the deployment files: no cluster, no Docker engine, no network.
#   1. hadolint on docker/Dockerfile.*
#   2. `kubectl kustomize` of k8s/ and of each overlay, every resource validated against the
#      Kubernetes schemas of `kubernetes-validate` (strict) and KEDA's through the schemas
#      vendored in k8s/vendor/, plus cross-references (scripts/validate_deploy.py)
#   3. docker-compose*.yml against the vendored Compose Specification schema (check-jsonschema)
# The tools are the `dev` extras of pyproject.toml (make venv installs them).
# Exit status: 0 all valid, 1 something invalid, 2 a tool is missing.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}

# The virtualenv's copy first, then PATH.
find_tool() {
    if [[ -x "$VENV_BIN/$1" ]]; then
        echo "$VENV_BIN/$1"
    elif command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    else
        echo "validate-deploy: missing tool '$1' (pip install -e '.[dev]')" >&2
        exit 2
    fi
}

PYTHON=$(find_tool python)
HADOLINT=$(find_tool hadolint)
KUBECTL=$(find_tool kubectl)
CHECK_JSONSCHEMA=$(find_tool check-jsonschema)
if ! "$PYTHON" -c "import kubernetes_validate, jsonschema, yaml" 2>/dev/null; then
    echo "validate-deploy: $PYTHON lacks kubernetes-validate, jsonschema or pyyaml" >&2
    exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== hadolint $("$HADOLINT" --version | grep -o '[0-9][0-9.]*' | head -1)"
"$HADOLINT" docker/Dockerfile.cpu docker/Dockerfile.cuda
echo "ok   docker/Dockerfile.cpu docker/Dockerfile.cuda"

echo "== kubectl kustomize ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"
rendered=()
for target in k8s k8s/overlays/gpu k8s/overlays/cpu; do
    out="$WORK/kustomize-$(echo "$target" | tr '/' '-').yaml"
    "$KUBECTL" kustomize "$target" >"$out"
    rendered+=("$out")
done
"$PYTHON" scripts/validate_deploy.py manifests --short-names --context k8s/secret.template.yaml \
    "${rendered[@]}" k8s/secret.template.yaml

echo "== compose ($("$CHECK_JSONSCHEMA" --version), k8s/vendor/compose-spec.json)"
"$PYTHON" scripts/validate_deploy.py compose-to-json "$WORK/compose" \
    docker-compose.yml docker-compose.cpu.yml
"$CHECK_JSONSCHEMA" --schemafile k8s/vendor/compose-spec.json \
    "$WORK/compose/docker-compose.json" "$WORK/compose/docker-compose.cpu.json"

echo "validate-deploy: all deployment files valid"
