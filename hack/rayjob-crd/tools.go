//go:build tools

// Package tools pins controller-gen and the KubeRay API types that gen.sh turns into the
// RayJob CRD used by the tests.
package tools

import (
	_ "github.com/ray-project/kuberay/ray-operator/apis/ray/v1"
	_ "sigs.k8s.io/controller-tools/cmd/controller-gen"
)
