"""The kopf operator. Importing this package is light: kopf loads only in `handlers`."""
