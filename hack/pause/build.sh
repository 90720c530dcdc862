#!/usr/bin/env bash
# Builds the pod sandbox ("pause") binary of the local cluster (main.go, standard library only)
# as a static binary. Cached outside the clone, keyed by this module's files. The directory is
# also the build context of hack/cluster/images/pause.Dockerfile.
# Prints the directory (pause) as the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's/^const version = "\(.*\)"$/\1/p' "$here/main.go")"
[ -n "$version" ] || { echo "no version constant in $here/main.go" >&2; exit 1; }
key="$(cat "$here/go.mod" "$here/main.go" "$here/build.sh" | sha256sum | cut -c1-16)"
cache="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
out="$cache/pause-$version-$key"
cached() { [ -x "$out/pause" ] && echo "$out"; }
cached && exit 0
mkdir -p "$cache"
exec 9>"$cache/pause.lock"
flock 9
cached && exit 0
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
start=$(date +%s)
echo "building pause $version into $out" >&2
cd "$here"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp/pause" . >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "pause built in $(( $(date +%s) - start )) s" >&2
echo "$out"
