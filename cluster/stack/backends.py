"""The backend interface shared by the local and the Kubernetes deployments.

A backend runs N replicas of the Triton server behind a load balancer:

- ``deploy()``           start the load balancer and ``cluster.replicas`` replicas; return once they are ready
- ``scale(n)``           ask for ``n`` replicas (returns at once; replicas become ready later)
- ``ready_replicas``     replicas that are ready and in the load balancer's rotation
- ``endpoints``          ``{"lb": url, "replicas": {name: url}}`` (ready replicas)
- ``metrics()``          ``{replica name: Prometheus text}`` scraped from each replica now
- ``model_stats()``      ``{replica name: JSON text}``: each replica's statistics of the served model
                         (``/v2/models/<m>/stats``: per batch size, the batches executed); optional
- ``teardown()``         stop everything (idempotent)
- ``replica_log()``      one :class:`ReplicaRecord` per replica ever requested

Replica lifecycle times are wall-clock epoch seconds: ``t_request`` (scale
decision), ``t_start`` (process / pod started), ``t_ready`` (model ready and in
rotation), ``t_drain`` (removed from rotation), ``t_gone`` (process exited /
pod deleted), with ``end_reason`` one of ``scale_down``, ``crashed``,
``teardown``, ``failed_start``.
"""
from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass


@dataclass
class ReplicaRecord:
    name: str
    t_request: float
    t_start: float | None = None
    t_live: float | None = None
    t_ready: float | None = None
    t_drain: float | None = None
    t_gone: float | None = None
    end_reason: str = ""
    exit_code: int | None = None
    endpoint: str = ""
    metrics_endpoint: str = ""

    @property
    def state(self) -> str:
        if self.t_gone is not None:
            return "gone"
        if self.t_drain is not None:
            return "draining"
        if self.t_ready is not None:
            return "ready"
        return "starting"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["state"] = self.state
        return d


class Backend(abc.ABC):
    name = "base"

    @abc.abstractmethod
    def deploy(self) -> None: ...

    @abc.abstractmethod
    def scale(self, n: int) -> None: ...

    @property
    @abc.abstractmethod
    def ready_replicas(self) -> int: ...

    @property
    @abc.abstractmethod
    def endpoints(self) -> dict: ...

    @abc.abstractmethod
    def metrics(self) -> dict[str, str]: ...

    @abc.abstractmethod
    def teardown(self) -> None: ...

    @abc.abstractmethod
    def replica_log(self) -> list[ReplicaRecord]: ...

    # optional
    @property
    def desired(self) -> int:
        return self.ready_replicas

    @property
    def pending_replicas(self) -> int:
        return sum(1 for r in self.replica_log() if r.state == "starting")

    def model_stats(self) -> dict[str, str]:
        """Each ready or draining replica's statistics of the served model (JSON text); {} if not supported."""
        return {}

    def kill(self, index: int = 0) -> str:
        """Fault injection: crash the ``index``-th ready replica; returns its name."""
        raise NotImplementedError(f"{self.name} backend does not support kill")

    poll_s = 0.1                       # wait_ready's polling period

    def wait_ready(self, n: int, timeout: float) -> None:
        """Block until ``n`` replicas are ready; ``_not_ready`` (raised) after ``timeout`` seconds."""
        import time
        deadline = time.monotonic() + timeout
        while self.ready_replicas < n:
            self._check_live()
            if time.monotonic() > deadline:
                raise self._not_ready(n, timeout)
            time.sleep(self.poll_s)

    def _check_live(self) -> None:
        """Raise if the deployment has failed (polled while waiting); default: nothing to check."""

    def _not_ready(self, n: int, timeout: float) -> Exception:
        return TimeoutError(f"{self.name} backend: {self.ready_replicas}/{n} replicas ready after {timeout:.0f} s")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.teardown()
        return False
