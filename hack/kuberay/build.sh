#!/usr/bin/env bash
# Builds the real KubeRay operator (the version pinned in go.mod) from the Go module proxy, and
# generates with controller-gen, from KubeRay's own Go types and kubebuilder markers, its CRDs
# (the options KubeRay's Makefile uses) and its ClusterRole. Cached outside the clone, keyed by
# this module's files, so a fresh clone on the same machine reuses them.
# Prints the directory (manager, crds/, rbac/role.yaml) as the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1 == "github.com/ray-project/kuberay/ray-operator" {print $2}' "$here/go.mod")"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)"
cache="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
out="$cache/kuberay-$version-$key"
cached() {
  [ -x "$out/manager" ] && [ -f "$out/crds/ray.io_rayjobs.yaml" ] && [ -f "$out/rbac/role.yaml" ] \
    && echo "$out"
}
cached && exit 0
mkdir -p "$cache"
exec 9>"$cache/kuberay.lock"
flock 9
cached && exit 0
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
start=$(date +%s)
echo "building KubeRay operator $version into $out" >&2
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
api=github.com/ray-project/kuberay/ray-operator
go build -trimpath -ldflags "-s -w" -o "$out.tmp/manager" "$api" >&2
go build -trimpath -o "$out.tmp/controller-gen" sigs.k8s.io/controller-tools/cmd/controller-gen >&2
"$out.tmp/controller-gen" \
  "crd:maxDescLen=0,generateEmbeddedObjectMeta=true,allowDangerousTypes=true" \
  paths="$api/apis/ray/v1" output:crd:dir="$out.tmp/crds" >&2
"$out.tmp/controller-gen" rbac:roleName=kuberay-operator \
  paths="$api/controllers/..." output:rbac:dir="$out.tmp/rbac" >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "KubeRay $version built in $(( $(date +%s) - start )) s" >&2
echo "$out"
