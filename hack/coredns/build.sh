#!/usr/bin/env bash
# Builds the real CoreDNS (the version pinned in go.mod, every in-tree plugin linked in) as a
# static binary from the Go module proxy, cached (../lib/cached-build.sh). The folder is also
# the build context of hack/cluster/images/coredns.Dockerfile.
# Prints the folder (coredns) as the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../lib/cached-build.sh"
version="$(awk '$1 == "github.com/coredns/coredns" {print $2} $1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$here/go.mod" | head -n1)"
[ -n "$version" ] || { echo "no github.com/coredns/coredns version in $here/go.mod" >&2; exit 1; }
build() {
  cd "$here"
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$version" \
    -o "$1/coredns" github.com/coredns/coredns
}
cached_build coredns "$version" "$here/go.mod $here/go.sum $here/build.sh" build coredns
