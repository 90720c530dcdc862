#!/usr/bin/env bash
# Builds the real KubeRay operator (the version pinned in go.mod) from the Go module proxy, and
# generates with controller-gen, from KubeRay's own Go types and kubebuilder markers, its CRDs
# (the options KubeRay's Makefile uses) and its ClusterRole. Cached (../lib/cached-build.sh).
# Prints the folder (manager, crds/, rbac/role.yaml) as the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../lib/cached-build.sh"
version="$(awk '$1 == "github.com/ray-project/kuberay/ray-operator" {print $2}' "$here/go.mod")"
api=github.com/ray-project/kuberay/ray-operator
build() {
  cd "$here"
  export CGO_ENABLED=0 GOFLAGS=-mod=mod
  go build -trimpath -ldflags "-s -w" -o "$1/manager" "$api"
  go build -trimpath -o "$1/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen
  "$1/controller-gen" "crd:maxDescLen=0,generateEmbeddedObjectMeta=true,allowDangerousTypes=true" \
    paths="$api/apis/ray/v1" output:crd:dir="$1/crds"
  "$1/controller-gen" rbac:roleName=kuberay-operator paths="$api/controllers/..." \
    output:rbac:dir="$1/rbac"
}
cached_build kuberay "$version" "$here/go.mod $here/go.sum $here/build.sh" build \
  manager crds/ray.io_rayjobs.yaml rbac/role.yaml
