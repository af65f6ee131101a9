"""The default configuration, embedded in the package (a link to configs/xen.yaml in the source tree)."""
