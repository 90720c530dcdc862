//go:build tools

// Package tools pins the real KubeRay operator (v1.6.x) that the local cluster runs, its API
// types that controller-gen turns into the CRDs and the operator's ClusterRole, and
// controller-gen itself.
package tools

import (
	_ "github.com/ray-project/kuberay/ray-operator"
	_ "github.com/ray-project/kuberay/ray-operator/apis/ray/v1"
	_ "sigs.k8s.io/controller-tools/cmd/controller-gen"
)
