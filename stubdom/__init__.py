"""stubdom-teed: a stub-domain OP-TEE mediator for Xen on Arm, and the
simulated machine it is compared in."""

__version__ = "0.1.0"
