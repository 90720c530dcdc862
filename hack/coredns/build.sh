#!/usr/bin/env bash
# Builds the real CoreDNS (the version pinned in go.mod, every in-tree plugin linked in) as a
# static binary from the Go module proxy. Cached outside the clone, keyed by this module's
# files, so a fresh clone on the same machine reuses it. The directory is also the build context
# of hack/cluster/images/coredns.Dockerfile.
# Prints the directory (coredns) as the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(awk '$1 == "github.com/coredns/coredns" {print $2} $1 == "require" && $2 == "github.com/coredns/coredns" {print $3}' "$here/go.mod" | head -n1)"
[ -n "$version" ] || { echo "no github.com/coredns/coredns version in $here/go.mod" >&2; exit 1; }
key="$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-16)"
cache="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
out="$cache/coredns-$version-$key"
cached() { [ -x "$out/coredns" ] && echo "$out"; }
cached && exit 0
mkdir -p "$cache"
exec 9>"$cache/coredns.lock"
flock 9
cached && exit 0
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
start=$(date +%s)
echo "building CoreDNS $version into $out" >&2
cd "$here"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
go build -trimpath \
  -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$version" \
  -o "$out.tmp/coredns" github.com/coredns/coredns >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "CoreDNS $version built in $(( $(date +%s) - start )) s" >&2
echo "$out"
