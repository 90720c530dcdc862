// Command pause is the local cluster's pod sandbox ("pause") container, written after
// Kubernetes' build/pause/linux/pause.c: it holds the pod's namespaces open, blocks until
// SIGINT or SIGTERM and then exits 0, and, being PID 1 of the pod's PID namespace when the
// pod shares one, reaps every zombie that is re-parented to it. No dependencies beyond the
// standard library; built static by build.sh.
package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is what `pause -v` prints; build.sh names its cache directory after it.
const version = "1.0"

func main() {
	if len(os.Args) > 1 {
		if os.Args[1] == "-v" && len(os.Args) == 2 {
			fmt.Println("kubetune-pause", version)
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "usage: %s [-v]\n", os.Args[0])
		os.Exit(2)
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "Warning: pause should be the first process")
	}

	// PID 1 gets no default signal dispositions from the kernel: without handlers, SIGTERM
	// would be ignored. Notify installs them.
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	// Children may have exited before the handler was installed.
	reap()
	for sig := range signals {
		switch sig {
		case syscall.SIGCHLD:
			reap()
		default:
			fmt.Fprintf(os.Stderr, "Shutting down, got signal: %v\n", sig)
			os.Exit(0)
		}
	}
	fmt.Fprintln(os.Stderr, "Error: infinite loop terminated")
	os.Exit(42)
}

// reap waits, without blocking, for every child that has exited. SIGCHLD signals coalesce, so
// one signal may stand for several children.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil || pid <= 0 { // ECHILD: no children; 0: none exited yet
			return
		}
	}
}
