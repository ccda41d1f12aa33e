"""The real stack's failures, in one home: every stack module raises these, and the CLIs' error policy
(:func:`cluster.stack.procs.run_guarded`) catches :data:`STACK_ERRORS` without importing the modules that
raise them. Every message is user-facing (one line)."""
from __future__ import annotations


class StackError(RuntimeError):
    """A failure of the running stack (a server, the load balancer, the load generator, a port, Kubernetes)."""


class TritonError(StackError):
    """A Triton server could not be started or failed."""


class LoadBalancerError(StackError):
    """HAProxy is missing, misconfigured or failed."""


class LoadGenError(StackError):
    """The load generator could not run or failed."""


class PortInUseError(StackError):
    """A configured port is already taken."""


class KubernetesError(StackError):
    """Kubernetes backend failure."""


# what the real-stack CLIs report as ``error: msg`` with exit code 1 (TimeoutError: a replica never got ready)
STACK_ERRORS: tuple[type[BaseException], ...] = (StackError, TimeoutError)

__all__ = ["StackError", "TritonError", "LoadBalancerError", "LoadGenError", "PortInUseError", "KubernetesError",
           "STACK_ERRORS"]
