#!/bin/sh
# Installs what the trainer image needs from its base's package manager, skipping what the base
# already has: Python 3.11 with venv (and, for the build stage, headers, a C++ toolchain, ninja
# and libaio for DeepSpeed's ops). Debian bookworm ships Python 3.11; Ubuntu 22.04 (the CUDA
# images) takes it from the deadsnakes PPA.
set -eu
stage="$1"
case "$stage" in
  build) need="python3.11 python3.11-venv python3.11-dev build-essential ninja-build libaio-dev ca-certificates" ;;
  runtime) need="python3.11 python3.11-venv libaio1 ca-certificates" ;;
  *) echo "usage: $0 build|runtime" >&2; exit 2 ;;
esac
missing=""
for pkg in $need; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
apt-get update
if ! apt-cache show python3.11 >/dev/null 2>&1; then
  apt-get install -y --no-install-recommends software-properties-common
  add-apt-repository -y ppa:deadsnakes/ppa
  apt-get update
fi
# shellcheck disable=SC2086
apt-get install -y --no-install-recommends $missing
rm -rf /var/lib/apt/lists/*
