#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager, kubectl, etcd), the
# local cluster's node (kube-scheduler, kubelet, kube-proxy) and helm from the Go module proxy,
# and caches the binaries outside the clone, keyed by the modules' go.sum files, so a fresh
# clone on the same machine reuses them.
# Prints the directory that holds the binaries as the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
k8s_version="v1.34.4"
tools="$here/../tools"
key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" "$tools/go.mod" "$tools/go.sum" | sha256sum | cut -c1-16)"
cache="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
bin="$cache/controlplane-$k8s_version-$key"
want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd helm)
cached() {
  for b in "${want[@]}"; do [ -x "$bin/$b" ] || return 1; done
  echo "$bin"
}
cached && exit 0
# One build at a time (parallel test sessions would otherwise share $bin.tmp).
mkdir -p "$cache"
exec 9>"$cache/build.lock"
flock 9
cached && exit 0
rm -rf "$bin.tmp" && mkdir -p "$bin.tmp"
start=$(date +%s)
echo "building control plane $k8s_version into $bin (cold build: 10-20 min on 2 cores)" >&2
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34 -X k8s.io/component-base/version.gitTreeState=clean"
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
go build -trimpath -ldflags "$ldflags" -o "$bin.tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl >&2
go build -trimpath -ldflags "-s -w" -o "$bin.tmp/etcd" ./etcd >&2
# helm v3 built this way reports Kubernetes v1.20 capabilities: pass --kube-version.
(cd "$tools" && go build -trimpath -ldflags "-s -w" -o "$bin.tmp/helm" helm.sh/helm/v3/cmd/helm) >&2
rm -rf "$bin" && mv "$bin.tmp" "$bin"
echo "control plane built in $(( $(date +%s) - start )) s" >&2
echo "$bin"
