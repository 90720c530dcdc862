//go:build tools

// Package tools pins the real CoreDNS (v1.14.x) that serves cluster.local in the local cluster.
// Its main package, with every in-tree plugin linked in (core/plugin), is built by build.sh.
package tools

import (
	_ "github.com/coredns/coredns"
)
