#!/usr/bin/env bash
# Builds the pod sandbox ("pause") binary of the local cluster (main.go, standard library only)
# as a static binary, cached (../lib/cached-build.sh). The folder is also the build context of
# hack/cluster/images/pause.Dockerfile.
# Prints the folder (pause) as the last line of stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../lib/cached-build.sh"
version="$(sed -n 's/^const version = "\(.*\)"$/\1/p' "$here/main.go")"
[ -n "$version" ] || { echo "no version constant in $here/main.go" >&2; exit 1; }
build() {
  cd "$here"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$1/pause" .
}
cached_build pause "$version" "$here/go.mod $here/main.go $here/build.sh" build pause
