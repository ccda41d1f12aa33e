"""Triton's dynamic batcher as one pure decision function.

Rules implemented (Triton Inference Server, "Dynamic Batcher" in
docs/user_guide/model_configuration.md and batcher.md, and
``DynamicBatchScheduler::GetDynamicBatch`` in
src/dynamic_batch_scheduler.cc of triton-inference-server/core):

1. Requests are taken from the queue in arrival order (FIFO, one priority level).
2. With ``max_queue_delay_us = 0`` a batch is formed only when a model instance
   is free; while all ``instances`` are busy, arrivals wait in the queue and all
   of them (up to the rules below) join the batch the freed instance takes.
   With a delay > 0 the batcher also works while every instance is busy: it
   *seals* the next batch by rules 3-5 (typically when the oldest pending
   request's delay expires), and that batch is fixed: later arrivals wait for
   the batch after it, even though no instance has started the sealed one. At
   most one sealed batch waits per replica (Triton's batcher holds one pending
   payload, ``curr_payload_``, and opens a new one only once it executes); it
   starts on the next free instance. Starting it does not run the batcher:
   requests still queued are batched at the next arrival or delay timer (or
   when an instance frees with nothing sealed). Sealed requests have left the
   queue: they neither time out (rule 7) nor count against ``max_queue_size``
   (rule 6).
   Measured on the bundled Triton 2.51 (``python -m cluster.probe``, one
   instance busy with a 12-item request, 5 ms delay, 12 repetitions): B
   arrives 12 ms later, C 40 ms later, both before the instance frees: B and C
   ran as two batches of one in 12 of 12 (with delay 0 as one batch of two in
   11 of 12). With C at 25 ms and D at 61 ms, after the instance started B:
   C and D ran as one batch in 11 of 12 (C was not sealed when B started). On
   the text encoder's runs (``configs/text_encoder.yaml``) without this rule
   the simulated queue time was half the real one in every run with a delay,
   and right in the runs without.
3. With ``q`` requests pending and a free instance, while the oldest has waited
   less than ``max_queue_delay_us`` (or the delay is 0): if some preferred batch
   size ``p <= q`` exists, the largest such ``p`` is sent at once -- never more,
   even when more are queued: ``GetDynamicBatch`` marks the cursor at the last
   preferred size it reaches and stops growing the batch past the largest
   preferred size (``max_preferred_batch_size_``), then sends the marked batch
   "if we found a preferred batch size and the queue delay hasn't been
   exceeded". Without ``preferred_batch_sizes``, ``max_batch_size`` is the only
   preferred size (``NormalizeModelConfig`` in common/src/model_config_utils.cc:
   "If preferred batch size is not specified set it to max-batch-size").
   Otherwise, if ``q >= max_batch_size``, a batch of ``max_batch_size`` is sent.
   A preferred size above ``max_batch_size`` is skipped: Triton refuses such a model config
   ("dynamic batching preferred size must be <= max batch size", ``ValidateModelConfig`` in
   common/src/model_config_utils.cc), and a deployment whose serving configurations
   (:mod:`simulator.variants`) differ in ``max_batch_size`` gives each the preferred sizes it can
   form; with none left, ``max_batch_size`` is the only preferred size, as without any.
4. Otherwise the batcher waits: the delay timer is measured from the *oldest
   pending* request's arrival (``queue_.OldestEnqueueTime()``); when
   ``now - oldest_arrival >= max_queue_delay_us`` the largest batch possible,
   ``min(q, max_batch_size)``, is sent, preferred size or not (so a batch past
   the largest preferred size forms only from requests that waited the delay).
   With ``max_queue_delay_us = 0`` that is immediately.
5. An arrival that completes a ``max_batch_size`` or preferred size, while an
   instance is free, dispatches at once (rule 3 re-evaluated on every arrival).
6. ``max_queue_size`` (> 0): an arrival that finds ``max_queue_size`` requests
   pending (waiting, not executing) is rejected at once (status REJECTED).
7. ``queue_timeout_us`` (> 0, default_queue_policy with timeout_action REJECT):
   a request still pending ``queue_timeout_us`` after its arrival is removed and
   fails (status TIMEOUT) at that instant; it is never part of a batch.

Ties in time are resolved as: completions free instances first, then timeouts
expire, then the batcher decides, then the arrival is enqueued (and the
batcher decides again). Both engines follow this order.
"""
from __future__ import annotations

from numba import njit

# statuses recorded per request
OK, REJECTED, TIMEOUT, DROPPED = 0, 1, 2, 3
STATUS_NAMES = ("ok", "rejected", "timeout", "dropped")


@njit(cache=True)
def batch_decision(q, oldest_s, now_s, max_batch, preferred, delay_us):
    """What a free instance does at ``now_s`` with ``q`` pending requests.

    ``preferred`` is a sorted int array of preferred batch sizes (may be empty; those above
    ``max_batch`` are skipped, rule 3);
    ``oldest_s`` is the arrival instant of the oldest pending request.
    Returns ``(n, deadline_s)``: send a batch of ``n`` now (``n > 0``), or send
    nothing and decide again at the absolute instant ``deadline_s`` (``-1``: the
    queue is empty). The delay test compares absolute instants,
    ``now_s >= oldest_s + delay``, and the timer is set to exactly that sum, so a
    timer firing is always recognised as expired — no subtraction of large,
    nearly equal times (which at t ~ 10^5 s loses more than a picosecond and
    could re-arm a timer at the same instant forever).
    """
    if q <= 0:
        return 0, -1.0
    deadline = oldest_s + delay_us * 1e-6
    expired = delay_us > 0 and now_s >= deadline
    best = 0
    if len(preferred) == 0:
        best = max_batch if q >= max_batch else 0
    else:
        for p in preferred:
            if p <= q and p > best and p <= max_batch:
                best = p
    if best > 0 and not expired:
        return best, now_s
    if q >= max_batch:
        return max_batch, now_s
    if now_s >= deadline:
        return q, now_s
    return 0, deadline


@njit(cache=True)
def may_seal_ahead(delay_us, sealed_waiting):
    """Rule 2: whether the batcher may seal a batch while every instance is busy: only with a queue delay
    (> 0) and while no sealed batch is already waiting for an instance."""
    return delay_us > 0 and sealed_waiting == 0
