// Command etcd wraps etcd's own entry point so the test control plane can build it
// from the Go module proxy (Debian's etcd 3.4 is older than kube-apiserver 1.34 supports).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
