#!/usr/bin/env bash
# Regenerates tests/fixtures/crds/ray.io_rayjobs.yaml, the RayJob CRD the fast tiers install,
# from the KubeRay build the local cluster runs (build.sh), so both tiers validate RayJobs
# against the same schema. A cluster-tier test fails when the two differ.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../../tests/fixtures/crds/ray.io_rayjobs.yaml"
dir="$("$here/build.sh" | tail -n 1)"
cp "$dir/crds/ray.io_rayjobs.yaml" "$out"
echo "wrote $out ($(wc -c <"$out") bytes) from $dir"
