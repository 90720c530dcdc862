"""kubetune API types (pure: no kopf, kubernetes, ray or torch)."""
