"""Pure builders of the Kubernetes objects the operator owns (no I/O)."""
