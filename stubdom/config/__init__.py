"""Configuration: the YAML schema, its loader and the per-domain policy.

The default configuration is embedded as package data: stubdom/config/xen.yaml
is a link to configs/xen.yaml in the source tree.
"""
