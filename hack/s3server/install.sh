#!/usr/bin/env bash
# Installs the tests' S3-compatible server (moto in server mode) into a venv of its own, cached
# outside the clone and keyed by its requirements; prints the server program's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
key="$(cat "$here/requirements.txt" "$here/install.sh" | sha256sum | cut -c1-16)"
cache="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
venv="$cache/s3server-$key"
if [ ! -e "$venv/.complete" ]; then
  mkdir -p "$cache"
  exec 9>"$cache/s3server.lock"
  flock 9
  if [ ! -e "$venv/.complete" ]; then
    # A venv's scripts name their interpreter by path, so it is built where it stays; the
    # marker written last makes a half-built one count as absent.
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$here/requirements.txt" >&2
    touch "$venv/.complete"
  fi
fi
echo "$venv/bin/moto_server"
