# Sourced by hack/{kuberay,coredns,pause}/build.sh: build once into a cache folder outside the
# clone, keyed by version and by the content of the build's inputs (so a fresh clone on the same
# machine reuses it and any change rebuilds), one build at a time under a lock, published by a
# rename so a killed build never leaves a half-filled folder behind.
#
#   cached_build NAME VERSION "INPUT FILES" BUILD_FUNCTION PRODUCT...
# BUILD_FUNCTION gets the folder to fill; PRODUCT... are the files that must exist in a finished
# folder. Prints the folder as the last line of stdout; progress goes to stderr.
cached_build() {
  local name="$1" version="$2" inputs="$3" build="$4"
  shift 4
  local key cache out start
  # shellcheck disable=SC2086
  key="$(cat $inputs "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
  cache="${KUBETUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubetune}"
  out="$cache/$name-$version-$key"
  _cached_build_done "$out" "$@" && { echo "$out"; return 0; }
  mkdir -p "$cache"
  exec 9>"$cache/$name.lock"
  flock 9
  _cached_build_done "$out" "$@" && { echo "$out"; return 0; }
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  start=$(date +%s)
  echo "building $name $version into $out" >&2
  "$build" "$out.tmp" >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "$name $version built in $(( $(date +%s) - start )) s" >&2
  echo "$out"
}

_cached_build_done() {
  local out="$1" product
  shift
  for product in "$@"; do [ -e "$out/$product" ] || return 1; done
}
