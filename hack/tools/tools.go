//go:build tools

// Package tools pins the command-line tools the tests use beside the control plane.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
