#!/usr/bin/env bash
# Validates every manifest offline: builds the kustomization (kubectl kustomize when kubectl is
# installed, else the listed resources as they are) and checks each object against the Kubernetes
# schemas with kubernetes-validate (strict: unknown fields fail). Exits non-zero on any error.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  python3 -m pip install -q kubernetes-validate >/dev/null 2>&1 || pip install -q kubernetes-validate
fi
out=$(mktemp --suffix=.yaml)
trap 'rm -f "$out"' EXIT
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize . > "$out"
else
  # Without kubectl: every resource the kustomization lists must exist; validate them as written.
  for f in $(python3 -c 'import re,sys; t=open("kustomization.yaml").read(); print(" ".join(re.findall(r"^  - (\S+\.yaml)$", t, re.M)))'); do
    [ -f "$f" ] || { echo "kustomization lists missing file $f"; exit 1; }
    { cat "$f"; echo "---"; } >> "$out"
  done
fi
kubernetes-validate --strict --quiet "$out"
echo "k8s manifests valid"
