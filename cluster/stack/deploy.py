"""Which backend runs the stack: :func:`make_backend` picks the local or the Kubernetes implementation of
:class:`cluster.stack.backends.Backend` (kept apart from the interface, which both implementations import)."""
from __future__ import annotations


def make_backend(stack, scenario, workdir):
    """The backend named by ``stack.backend`` for ``scenario`` (its batching and cluster blocks)."""
    if stack.backend == "local":
        from .local import LocalBackend
        return LocalBackend(scenario, stack, workdir)
    if stack.backend == "kubernetes":
        from .kubernetes import KubernetesBackend
        return KubernetesBackend(scenario, stack, workdir)
    raise ValueError(f"unknown backend {stack.backend!r}")
