"""The fast data plane: request flow of all replicas advanced in one compiled loop.

SimPy runs the control plane (ticks, start-ups, drains; see
:mod:`simulator.engine`); between two control events this module advances every
replica's queue, dynamic batcher and model instances in a single numba-compiled
event loop over flat arrays: no Python object or SimPy process per request.
Events are found by a linear scan over replica slots (cheap for the tens of
replicas a node pool holds) and processed in the tie order documented in
:mod:`simulator.batching` (completion, timeout, batcher timer, arrival).

State lives in numpy arrays owned by :class:`FastPlane`, so the control plane
can add, ready, drain and cancel replicas between calls, and the kernel can stop
at any event boundary (``until``) and resume later.

Randomness comes from :func:`simulator.rng.uniform` keyed by (replica, batch
index), (request id), (user, request index): identical to the reference
engine's draws whatever order events are visited in.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# numba's on-disk cache of this module keys on this file only: the batcher rules compiled into it come from
# simulator.batching, so a change there must touch this file too (rules as of: the batch is capped at the
# largest preferred size until the oldest request's delay expires; with a delay, one batch is sealed ahead while
# every instance is busy; a preferred size above the max batch size is skipped).
from simulator.batching import DROPPED, OK, REJECTED, TIMEOUT, batch_decision, may_seal_ahead
from simulator.contention import contention_factor, new_rate_window, node_rate, note_arrival
from simulator.metrics import (A_ARRIVALS, A_BUSY_S, A_COMPUTE_S, A_DROPPED, A_EXEC, A_FAIL, A_INFER,
                               A_LAT2_S, A_LAT_S, A_OK, A_QUEUE_S, A_REJECTED, A_SLO_VIOL, A_TIMEOUT,
                               H_BINS, N_ACC, hist_bin)
from simulator.rng import LB, OVERHEAD, SERVICE, THINK, uniform
from simulator.service import draw

INF = math.inf
FREE, STARTING, READY, DRAINING = 0, 1, 2, 3
LB_RR, LB_RANDOM, LB_LEAST = 0, 1, 2
LB_CODES = {"round_robin": LB_RR, "random": LB_RANDOM, "least_outstanding": LB_LEAST}

# int state vector
# S_NSLOTS: slots the kernel scans, 1 + the highest slot ever used (slots are taken lowest first)
S_NSLOTS, S_RR, S_NEXT_ID, S_NREADY, S_PTR, S_HEAP, S_NBUSY, S_REC_CAP, S_NGONE = range(9)
# float params
F_WARMUP, F_SLO, F_STOP, F_DELAY_US, F_TIMEOUT, F_ISTART, F_INTERF, F_CORES, F_RCONT, F_RWIN, F_RCORES = range(11)
# int params
P_SEED, P_MAXB, P_INST, P_MAXQ, P_LB, P_REC, P_CLOSED, P_OVZERO = range(8)

RET_DONE, RET_GROW_REC, RET_GROW_QUEUE = 0, 1, 2


# --------------------------------------------------------------------------- small helpers


@njit(cache=True)
def _heap_push(ht, hu, size, t, u):
    i = size
    ht[i] = t
    hu[i] = u
    while i > 0:
        p = (i - 1) // 2
        if ht[p] < ht[i] or (ht[p] == ht[i] and hu[p] < hu[i]):
            break
        ht[p], ht[i] = ht[i], ht[p]
        hu[p], hu[i] = hu[i], hu[p]
        i = p
    return size + 1


@njit(cache=True)
def _heap_pop(ht, hu, size):
    size -= 1
    ht[0] = ht[size]
    hu[0] = hu[size]
    i = 0
    while True:
        l, r, m = 2 * i + 1, 2 * i + 2, i
        if l < size and (ht[l] < ht[m] or (ht[l] == ht[m] and hu[l] < hu[m])):
            m = l
        if r < size and (ht[r] < ht[m] or (ht[r] == ht[m] and hu[r] < hu[m])):
            m = r
        if m == i:
            break
        ht[m], ht[i] = ht[i], ht[m]
        hu[m], hu[i] = hu[i], hu[m]
        i = m
    return size


@njit(cache=True)
def _overhead_s(ip, ovt, rid):
    if ip[P_OVZERO] == 1:
        return 0.0
    return draw(ovt, uniform(ip[P_SEED], OVERHEAD, rid, 0)) * 1e-3


@njit(cache=True)
def _finish_request(st, fs, ip, ia, ga, ih, gh, rec_f, rec_i, ovt, tht, ht, hu, ukount,
                    rid, user, arr_t, t_server, status, disp_t, bsize, uid, queue_s, compute_s):
    """Account one finished request (success or failure) and reschedule its user."""
    ov = _overhead_s(ip, ovt, rid)
    done = t_server + ov
    lat = done - arr_t
    counted = arr_t >= fs[F_WARMUP]
    if status == OK:
        ia[A_OK] += 1.0
        ia[A_QUEUE_S] += queue_s
        ia[A_COMPUTE_S] += compute_s
        ia[A_LAT_S] += lat
        hb = hist_bin(lat * 1e3)
        ih[hb] += 1
        if lat > fs[F_SLO]:
            ia[A_SLO_VIOL] += 1.0
        if counted:
            ga[A_OK] += 1.0
            ga[A_QUEUE_S] += queue_s
            ga[A_COMPUTE_S] += compute_s
            ga[A_LAT_S] += lat
            ga[A_LAT2_S] += lat * lat
            gh[hb] += 1
            if lat > fs[F_SLO]:
                ga[A_SLO_VIOL] += 1.0
    else:
        ia[A_FAIL] += 1.0
        ia[A_SLO_VIOL] += 1.0
        k = A_REJECTED if status == REJECTED else (A_TIMEOUT if status == TIMEOUT else A_DROPPED)
        ia[k] += 1.0
        if counted:
            ga[A_FAIL] += 1.0
            ga[A_SLO_VIOL] += 1.0
            ga[k] += 1.0
    if ip[P_REC] == 1:
        rec_f[1, rid] = disp_t
        rec_f[2, rid] = done
        rec_i[0, rid] = uid
        rec_i[1, rid] = bsize
        rec_i[2, rid] = status
    if ip[P_CLOSED] == 1 and user >= 0:
        k = ukount[user]
        ukount[user] = k + 1
        think = draw(tht, uniform(ip[P_SEED], THINK, user, k))
        if status != OK and think + ov < 1e-3:
            think = 1e-3 - ov  # a failing user with no think time would spin at one instant
        nxt = done + think
        if nxt < fs[F_STOP]:
            st[S_HEAP] = _heap_push(ht, hu, st[S_HEAP], nxt, user)


@njit(cache=True)
def _try_dispatch(s, t, st, fs, rw, ip, pref, table, cfg_maxb, s_cfg, s_uid, s_nb, q_arr, q_id, q_user, q_head,
                  q_len, q_sealed, i_busy, i_start, b_arr, b_id, b_user, b_n, b_svc, timer):
    """Run the batcher of slot ``s`` at time ``t``: start batches on free instances and, with every instance
    busy, seal one batch ahead (:mod:`simulator.batching` rule 2). A sealed batch is the first
    ``q_sealed[s]`` requests of the queue ring; they start, in order, before any other, and starting one
    does not seal the next (that waits for the next arrival or delay timer). The slot's serving configuration
    ``c = s_cfg[s]`` gives its max batch size ``cfg_maxb[c]`` and service table ``table[c]``."""
    ninst = ip[P_INST]
    c = s_cfg[s]
    maxb = cfg_maxb[c]
    cap = q_arr.shape[1]
    started_sealed = False
    while True:
        free = -1
        for i in range(ninst):
            if i_busy[s, i] == INF:
                free = i
                break
        q = q_len[s]
        sealed = q_sealed[s]
        if free < 0:
            timer[s] = INF
            if not started_sealed and q > sealed and may_seal_ahead(fs[F_DELAY_US], sealed):
                n, deadline = batch_decision(q, q_arr[s, q_head[s]], t, maxb, pref, fs[F_DELAY_US])
                if n > 0:
                    q_sealed[s] = n
                elif deadline >= 0:
                    timer[s] = deadline
            return
        if q == 0:
            timer[s] = INF
            return
        if sealed > 0:
            n = sealed
            q_sealed[s] = 0
            started_sealed = True
        else:
            oldest = q_arr[s, q_head[s]]
            n, deadline = batch_decision(q, oldest, t, maxb, pref, fs[F_DELAY_US])
            if n == 0:
                timer[s] = deadline if deadline >= 0 else INF
                return
        k = s_nb[s]
        s_nb[s] = k + 1
        svc = draw(table[c, n - 1], uniform(ip[P_SEED], SERVICE, s_uid[s], k)) * 1e-3
        st[S_NBUSY] += 1
        if fs[F_INTERF] > 0.0 or fs[F_RCONT] > 0.0:
            svc *= contention_factor(st[S_NBUSY], fs[F_CORES], fs[F_INTERF], fs[F_RCORES], fs[F_RCONT],
                                     node_rate(rw, t, fs[F_RWIN]))
        h = q_head[s]
        for j in range(n):
            b_arr[s, free, j] = q_arr[s, h]
            b_id[s, free, j] = q_id[s, h]
            b_user[s, free, j] = q_user[s, h]
            h += 1
            if h == cap:
                h = 0
        q_head[s] = h
        q_len[s] = q - n
        b_n[s, free] = n
        b_svc[s, free] = svc
        i_start[s, free] = t
        i_busy[s, free] = t + svc


@njit(cache=True)
def _slot_empty(s, ninst, q_len, i_busy):
    if q_len[s] > 0:
        return False
    for i in range(ninst):
        if i_busy[s, i] != INF:
            return False
    return True


@njit(cache=True, nogil=True)
def advance(until, arr, st, fs, rw, ip, pref, table, cfg_maxb, ovt, tht,
            s_state, s_cfg, s_uid, s_nb, ready, q_arr, q_id, q_user, q_head, q_len, q_sealed,
            i_busy, i_start, b_arr, b_id, b_user, b_n, b_svc, timer,
            ht, hu, ukount, ia, ga, ih, gh, rec_f, rec_i, gone_uid, gone_t):
    """Process every data-plane event with time < ``until``. Returns a RET_* code.

    Runs without the GIL: other Python threads (e.g. ``simulator.run`` importing its output
    libraries) proceed meanwhile."""
    ninst = ip[P_INST]
    closed = ip[P_CLOSED] == 1
    timeout = fs[F_TIMEOUT]
    warm = fs[F_WARMUP]
    nslots = st[S_NSLOTS]
    narr = arr.shape[0]
    qcap = q_arr.shape[1]
    while True:
        # ---- find the next event of each kind
        tc = INF
        cs = -1
        ci = -1
        tt = INF
        ts = -1
        tm = INF
        ms = -1
        for s in range(nslots):
            stt = s_state[s]
            if stt < READY:
                continue
            for i in range(ninst):
                if i_busy[s, i] < tc:
                    tc = i_busy[s, i]
                    cs = s
                    ci = i
            if timeout > 0.0 and q_len[s] > q_sealed[s]:
                h = q_head[s] + q_sealed[s]
                d = q_arr[s, h - qcap if h >= qcap else h] + timeout
                if d < tt:
                    tt = d
                    ts = s
            if timer[s] < tm:
                tm = timer[s]
                ms = s
        if closed:
            ta = ht[0] if st[S_HEAP] > 0 else INF
        else:
            ta = arr[st[S_PTR]] if st[S_PTR] < narr else INF
        tmin = min(min(tc, tt), min(tm, ta))
        if tmin >= until:
            return RET_DONE

        if tc == tmin:
            # ---- batch completion
            s, i = cs, ci
            n = b_n[s, i]
            start = i_start[s, i]
            svc = b_svc[s, i]
            if s_state[s] == READY:
                ia[A_BUSY_S] += tc - max(start, fs[F_ISTART])
            ia[A_EXEC] += 1.0
            ia[A_INFER] += n
            if start >= warm:
                ga[A_EXEC] += 1.0
                ga[A_INFER] += n
            i_busy[s, i] = INF
            b_n[s, i] = 0
            st[S_NBUSY] -= 1
            for j in range(n):
                a = b_arr[s, i, j]
                _finish_request(st, fs, ip, ia, ga, ih, gh, rec_f, rec_i, ovt, tht, ht, hu, ukount,
                                b_id[s, i, j], b_user[s, i, j], a, tc, OK, start, n, s_uid[s],
                                start - a, svc)
            _try_dispatch(s, tc, st, fs, rw, ip, pref, table, cfg_maxb, s_cfg, s_uid, s_nb, q_arr, q_id,
                          q_user, q_head, q_len, q_sealed, i_busy, i_start, b_arr, b_id, b_user, b_n, b_svc, timer)
            if s_state[s] == DRAINING and _slot_empty(s, ninst, q_len, i_busy):
                s_state[s] = FREE
                gone_uid[st[S_NGONE]] = s_uid[s]
                gone_t[st[S_NGONE]] = tc
                st[S_NGONE] += 1
        elif tt == tmin:
            # ---- queue timeout of the oldest pending request (the first after a sealed batch, whose requests
            # have left the queue): the sealed requests move up one place into the freed head position
            s = ts
            h = q_head[s] + q_sealed[s]
            if h >= qcap:
                h -= qcap
            rid = q_id[s, h]
            a = q_arr[s, h]
            u = q_user[s, h]
            for j in range(q_sealed[s]):
                src = h - 1 if h > 0 else qcap - 1
                q_arr[s, h] = q_arr[s, src]
                q_id[s, h] = q_id[s, src]
                q_user[s, h] = q_user[s, src]
                h = src
            h = q_head[s] + 1
            q_head[s] = 0 if h == qcap else h
            q_len[s] -= 1
            _finish_request(st, fs, ip, ia, ga, ih, gh, rec_f, rec_i, ovt, tht, ht, hu, ukount,
                            rid, u, a, tt, TIMEOUT, tt, 0, s_uid[s], 0.0, 0.0)
            _try_dispatch(s, tt, st, fs, rw, ip, pref, table, cfg_maxb, s_cfg, s_uid, s_nb, q_arr, q_id,
                          q_user, q_head, q_len, q_sealed, i_busy, i_start, b_arr, b_id, b_user, b_n, b_svc, timer)
            if s_state[s] == DRAINING and _slot_empty(s, ninst, q_len, i_busy):
                s_state[s] = FREE
                gone_uid[st[S_NGONE]] = s_uid[s]
                gone_t[st[S_NGONE]] = tt
                st[S_NGONE] += 1
        elif tm == tmin:
            # ---- batcher delay timer
            timer[ms] = INF
            _try_dispatch(ms, tm, st, fs, rw, ip, pref, table, cfg_maxb, s_cfg, s_uid, s_nb, q_arr, q_id,
                          q_user, q_head, q_len, q_sealed, i_busy, i_start, b_arr, b_id, b_user, b_n, b_svc, timer)
        else:
            # ---- arrival
            rid = st[S_NEXT_ID]
            if ip[P_REC] == 1 and rid >= st[S_REC_CAP]:
                return RET_GROW_REC
            nr = st[S_NREADY]
            s = -1
            if nr > 0:
                lb = ip[P_LB]
                if lb == LB_RR:
                    s = ready[st[S_RR] % nr]
                elif lb == LB_RANDOM:
                    s = ready[int(uniform(ip[P_SEED], LB, rid, 0) * nr)]
                else:
                    best = 1 << 62
                    for k in range(nr):
                        c = ready[k]
                        o = q_len[c]
                        for i in range(ninst):
                            o += b_n[c, i]
                        if o < best:
                            best = o
                            s = c
                if s >= 0 and q_len[s] >= qcap and (ip[P_MAXQ] == 0 or q_len[s] - q_sealed[s] < ip[P_MAXQ]):
                    return RET_GROW_QUEUE
                if lb == LB_RR:
                    st[S_RR] += 1
            if closed:
                user = hu[0]
                st[S_HEAP] = _heap_pop(ht, hu, st[S_HEAP])
            else:
                user = -1
                st[S_PTR] += 1
            st[S_NEXT_ID] = rid + 1
            if fs[F_RCONT] > 0.0 or fs[F_RCORES] > 0.0:
                note_arrival(rw, ta, fs[F_RWIN])
            ia[A_ARRIVALS] += 1.0
            if ta >= warm:
                ga[A_ARRIVALS] += 1.0
            if ip[P_REC] == 1:          # finish fields stay NaN / -1 until the request finishes
                rec_f[0, rid] = ta
                rec_f[1, rid] = np.nan
                rec_f[2, rid] = np.nan
                rec_i[0, rid] = -1
                rec_i[1, rid] = -1
                rec_i[2, rid] = -1
            if s < 0:
                _finish_request(st, fs, ip, ia, ga, ih, gh, rec_f, rec_i, ovt, tht, ht, hu, ukount,
                                rid, user, ta, ta, DROPPED, ta, 0, -1, 0.0, 0.0)
            elif ip[P_MAXQ] > 0 and q_len[s] - q_sealed[s] >= ip[P_MAXQ]:
                _finish_request(st, fs, ip, ia, ga, ih, gh, rec_f, rec_i, ovt, tht, ht, hu, ukount,
                                rid, user, ta, ta, REJECTED, ta, 0, s_uid[s], 0.0, 0.0)
            else:
                p = q_head[s] + q_len[s]
                if p >= qcap:
                    p -= qcap
                q_arr[s, p] = ta
                q_id[s, p] = rid
                q_user[s, p] = user
                q_len[s] += 1
                _try_dispatch(s, ta, st, fs, rw, ip, pref, table, cfg_maxb, s_cfg, s_uid, s_nb, q_arr, q_id,
                              q_user, q_head, q_len, q_sealed, i_busy, i_start, b_arr, b_id, b_user, b_n, b_svc, timer)


@njit(cache=True)
def busy_snapshot(t, fs, s_state, i_busy, i_start, nslots):
    """Busy time of ready slots' running batches within [interval start, t)."""
    tot = 0.0
    for s in range(nslots):
        if s_state[s] != READY:
            continue
        for i in range(i_busy.shape[1]):
            if i_busy[s, i] != INF:
                tot += t - max(i_start[s, i], fs[F_ISTART])
    return tot


# --------------------------------------------------------------------------- compiled-code cache


def _drop_cache_if_callees_changed() -> None:
    """Recompile this module's kernels when a module they compile in has changed.

    Numba's on-disk cache (``cache=True``; files next to this module in ``__pycache__``, or
    under ``NUMBA_CACHE_DIR``) is keyed by the source of the file a function is defined in
    only: "changes in functions defined in other files are not detected" (numba docs, Notes on
    caching). :func:`advance` compiles in :mod:`simulator.batching`, :mod:`simulator.contention`,
    :mod:`simulator.metrics`, :mod:`simulator.rng` and :mod:`simulator.service`, so their digest
    is kept beside the cache and the cache is flushed when it differs (after an edit or an
    upgrade). Without a writable cache, or if numba's cache object changes shape, numba's own
    rule applies.
    """
    import hashlib
    import os
    import sys
    deps = [sys.modules[m].__file__ for m in ("simulator.batching", "simulator.contention", "simulator.metrics",
                                              "simulator.rng", "simulator.service")]
    kernels = [f for f in globals().values()
               if hasattr(f, "_cache") and getattr(f, "py_func", None) is not None and f.py_func.__module__ == __name__]
    try:
        h = hashlib.sha256()
        for path in deps:
            with open(path, "rb") as f:
                h.update(f.read())
        digest = h.hexdigest()
        stamp = os.path.join(advance._cache.cache_path, "fastplane.callees.sha256")
        try:
            with open(stamp) as f:
                if f.read() == digest:
                    return
        except FileNotFoundError:
            pass
        for k in kernels:
            k._cache.flush()
        tmp = f"{stamp}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(digest)
        os.replace(tmp, stamp)
    except (AttributeError, OSError):
        return


_drop_cache_if_callees_changed()


# --------------------------------------------------------------------------- owner object


class FastPlane:
    """Array-backed data plane; see the module docstring. Used by :mod:`simulator.engine`."""

    name = "fast"

    def __init__(self, sc, models, think_table, arrivals, env=None, memory=None):
        """``models``: one :class:`~simulator.service.ServiceModel` per serving configuration
        (:mod:`simulator.variants`), all with the deployment's overhead; a replica serves with
        ``models[config]`` (:meth:`add_replica`)."""
        b = sc.batching
        self.sc = sc
        self.arrivals = arrivals                     # ArrivalSource or None (closed loop)
        self.closed = sc.workload.kind == "closed_loop"
        self.cfg_maxb = np.array([m.max_batch for m in models], dtype=np.int64)
        self.max_batch = int(self.cfg_maxb.max())
        self.ip = np.array([sc.seed, self.max_batch, b.instances, b.max_queue_size,
                            LB_CODES[sc.cluster.load_balancer], int(sc.record_requests), int(self.closed),
                            int(models[0].overhead_zero)], dtype=np.int64)
        stop = sc.duration_s
        self.fs = np.array([sc.warmup_s, sc.slo_ms * 1e-3, stop, float(b.max_queue_delay_us),
                            b.queue_timeout_us * 1e-6, 0.0, sc.cluster.interference,
                            float(sc.cluster.node_cores), sc.cluster.rate_contention,
                            sc.cluster.rate_window_s, sc.cluster.rate_cores], dtype=np.float64)
        self.rw = new_rate_window()
        # the deployment's preferred sizes (batch_decision skips those above a configuration's max batch size);
        # per configuration its service table, padded to the largest max batch size (rows past its own unread)
        self.pref = np.array(b.preferred_batch_sizes, dtype=np.int64)
        if len(models) == 1:
            self.table = models[0].table[np.newaxis]
        else:
            self.table = np.zeros((len(models), self.max_batch, models[0].table.shape[1]))
            for c, m in enumerate(models):
                self.table[c, :m.max_batch] = m.table
        self.ovt, self.tht = models[0].overhead, think_table
        self.st = np.zeros(9, dtype=np.int64)
        self._alloc_slots(max(4, 2 * sc.cluster.max_replicas + 2))
        qcap = b.max_queue_size if b.max_queue_size > 0 else 64
        self._alloc_queue(qcap)
        users = sc.workload.users if self.closed else 1
        self.ht = np.full(users, INF)
        self.hu = np.zeros(users, dtype=np.int64)
        self.ukount = np.zeros(users, dtype=np.int64)
        if self.closed:
            sr = sc.workload.spawn_rate
            for u in range(users):
                t0 = u / sr if sr > 0 else 0.0
                if t0 < stop:
                    self.st[S_HEAP] = _heap_push(self.ht, self.hu, self.st[S_HEAP], t0, u)
        self.ia = np.zeros(N_ACC)
        self.ga = np.zeros(N_ACC)
        self.ih = np.zeros(H_BINS, dtype=np.int64)
        self.gh = np.zeros(H_BINS, dtype=np.int64)
        self.memory = memory                         # simulator.memory.MemoryEstimate or None
        self.max_records = memory.max_records(self.name) if memory is not None else None
        cap = 0
        if sc.record_requests:
            cap = 1024
            if memory is not None:
                # room for the expected requests (+6 Poisson standard deviations; closed loop: an upper
                # bound), so the arrays never regrow; allocated empty, only the pages used are touched
                cap = int(max(cap, memory.requests + 6 * math.sqrt(memory.requests) + 1024))
            if self.max_records is not None:
                cap = min(cap, max(self.max_records, 1))
        # np.empty: pages are touched as requests arrive (each arrival initialises its record)
        self.rec_f = np.empty((3, cap))
        self.rec_i = np.empty((3, cap), dtype=np.int64)
        self.st[S_REC_CAP] = cap
        self.arr = np.zeros(0)
        self.uid_slot: dict[int, int] = {}

    # -- allocation
    def _alloc_slots(self, n: int) -> None:
        old = getattr(self, "s_state", None)
        inst, mb = self.sc.batching.instances, self.max_batch
        new = dict(s_state=np.zeros(n, np.int64), s_cfg=np.zeros(n, np.int64), s_uid=np.full(n, -1, np.int64),
                   s_nb=np.zeros(n, np.int64), ready=np.zeros(n, np.int64), timer=np.full(n, INF),
                   q_head=np.zeros(n, np.int64), q_len=np.zeros(n, np.int64), q_sealed=np.zeros(n, np.int64),
                   i_busy=np.full((n, inst), INF), i_start=np.zeros((n, inst)),
                   b_arr=np.zeros((n, inst, mb)), b_id=np.zeros((n, inst, mb), np.int64),
                   b_user=np.zeros((n, inst, mb), np.int64), b_n=np.zeros((n, inst), np.int64),
                   b_svc=np.zeros((n, inst)), gone_uid=np.zeros(n, np.int64), gone_t=np.zeros(n))
        if old is not None:
            k = len(old)
            for name, a in new.items():
                a[:k] = getattr(self, name)
            qa = self.q_arr
            self.q_arr = np.zeros((n, qa.shape[1]))
            self.q_arr[:k] = qa
            for name in ("q_id", "q_user"):
                a = np.zeros((n, qa.shape[1]), np.int64)
                a[:k] = getattr(self, name)
                setattr(self, name, a)
        for name, a in new.items():
            setattr(self, name, a)

    def _alloc_queue(self, cap: int) -> None:
        n = len(self.s_state)
        if not hasattr(self, "q_arr"):
            self.q_arr = np.zeros((n, cap))
            self.q_id = np.zeros((n, cap), np.int64)
            self.q_user = np.zeros((n, cap), np.int64)
            return
        old_cap = self.q_arr.shape[1]
        qa, qi, qu = np.zeros((n, cap)), np.zeros((n, cap), np.int64), np.zeros((n, cap), np.int64)
        for s in range(n):  # unroll each ring buffer to start at 0
            idx = (self.q_head[s] + np.arange(self.q_len[s])) % old_cap
            L = len(idx)
            qa[s, :L], qi[s, :L], qu[s, :L] = self.q_arr[s, idx], self.q_id[s, idx], self.q_user[s, idx]
        self.q_arr, self.q_id, self.q_user = qa, qi, qu
        self.q_head[:] = 0

    # -- the compiled loop
    def advance(self, t: float) -> None:
        if self.arrivals is not None:
            new = self.arrivals.until(t)
            rest = self.arr[self.st[S_PTR]:]
            self.arr = np.concatenate([rest, new]) if len(rest) else new
            self.st[S_PTR] = 0
        while True:
            r = advance(t, self.arr, self.st, self.fs, self.rw, self.ip, self.pref, self.table, self.cfg_maxb,
                        self.ovt, self.tht, self.s_state, self.s_cfg, self.s_uid, self.s_nb, self.ready, self.q_arr, self.q_id, self.q_user,
                        self.q_head, self.q_len, self.q_sealed, self.i_busy, self.i_start, self.b_arr, self.b_id,
                        self.b_user, self.b_n, self.b_svc, self.timer, self.ht, self.hu, self.ukount,
                        self.ia, self.ga, self.ih, self.gh, self.rec_f, self.rec_i, self.gone_uid,
                        self.gone_t)
            if r == RET_DONE:
                return
            if r == RET_GROW_REC:
                k = self.rec_f.shape[1]
                if self.max_records is not None and k >= self.max_records:
                    from simulator.memory import records_overflow
                    raise records_overflow(self.memory, self.name, float(self.arr[self.st[S_PTR]]) if
                                           not self.closed else float(self.ht[0]))
                cap = max(1024, 2 * k)
                if self.max_records is not None:
                    cap = min(cap, self.max_records)
                f = np.empty((3, cap))
                i = np.empty((3, cap), dtype=np.int64)
                f[:, :k], i[:, :k] = self.rec_f, self.rec_i
                self.rec_f, self.rec_i = f, i
                self.st[S_REC_CAP] = cap
            else:
                self._alloc_queue(2 * self.q_arr.shape[1])

    # -- control-plane operations (between advance calls)
    def add_replica(self, uid: int, config: int = 0) -> None:
        """A starting replica ``uid`` serving with configuration ``config`` (an index into the models)."""
        free = np.flatnonzero(self.s_state == FREE)
        if len(free) == 0:
            self._alloc_slots(2 * len(self.s_state))
            free = np.flatnonzero(self.s_state == FREE)
        s = int(free[0])
        self.st[S_NSLOTS] = max(self.st[S_NSLOTS], s + 1)
        self.s_state[s] = STARTING
        self.s_uid[s] = uid
        self.s_cfg[s] = config
        self.s_nb[s] = 0
        self.q_len[s] = 0
        self.q_sealed[s] = 0
        self.q_head[s] = 0
        self.timer[s] = INF
        self.i_busy[s, :] = INF
        self.b_n[s, :] = 0
        self.uid_slot[uid] = s

    def set_ready(self, uid: int, t: float) -> None:
        s = self.uid_slot[uid]
        self.s_state[s] = READY
        self.ready[self.st[S_NREADY]] = s
        self.st[S_NREADY] += 1

    def _unready(self, s: int) -> None:
        n = self.st[S_NREADY]
        lst = list(self.ready[:n])
        lst.remove(s)
        self.ready[:n - 1] = lst
        self.st[S_NREADY] = n - 1

    def drain(self, uid: int, t: float) -> bool:
        """Stop routing to ``uid``; returns True if it is already empty (gone now)."""
        s = self.uid_slot[uid]
        if self.s_state[s] == STARTING:
            self.s_state[s] = FREE
            del self.uid_slot[uid]
            return True
        self._unready(s)
        if _slot_empty(s, self.sc.batching.instances, self.q_len, self.i_busy):
            self.s_state[s] = FREE
            del self.uid_slot[uid]
            return True
        self.s_state[s] = DRAINING
        return False

    def pop_gone(self) -> list[tuple[int, float]]:
        n = int(self.st[S_NGONE])
        out = [(int(self.gone_uid[k]), float(self.gone_t[k])) for k in range(n)]
        self.st[S_NGONE] = 0
        for u, _ in out:
            self.uid_slot.pop(u, None)
        return out

    def take_interval(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Interval accumulators and latency histogram since the last call; resets them."""
        ia = self.ia.copy()
        ia[A_BUSY_S] += busy_snapshot(t, self.fs, self.s_state, self.i_busy, self.i_start, self.st[S_NSLOTS])
        ih = self.ih.copy()
        self.ia[:] = 0.0
        self.ih[:] = 0
        self.fs[F_ISTART] = t
        return ia, ih

    def inflight(self) -> int:
        live = self.s_state >= READY
        return int(self.q_len[live].sum() + self.b_n[live].sum())

    def feed(self, times: np.ndarray) -> None:
        """Open-loop arrivals pushed from outside (a pipeline's upstream stage), sorted, none in the past."""
        rest = self.arr[self.st[S_PTR]:]
        self.arr = np.concatenate([rest, times]) if len(rest) else np.array(times, dtype=float)
        self.st[S_PTR] = 0

    def take_finished(self) -> tuple[np.ndarray, ...]:
        """Requests finished since the last call: their ids, client-side completion instants (server time +
        overhead), statuses, replicas (-1: none took it) and arrival instants, in id order. Reads the per-request records (``record_requests`` must be on)."""
        n = self.n_requests
        if not hasattr(self, "_fin_taken"):
            self._fin_taken, self._fin_lo = np.zeros(1024, bool), 0
        if len(self._fin_taken) < n:
            grown = np.zeros(max(2 * len(self._fin_taken), n), bool)
            grown[:len(self._fin_taken)] = self._fin_taken
            self._fin_taken = grown
        lo = self._fin_lo
        taken = self._fin_taken[lo:n]
        comp = self.rec_f[2, lo:n]
        ids = lo + np.flatnonzero(~np.isnan(comp) & ~taken)
        self._fin_taken[ids] = True
        pending = np.flatnonzero(~self._fin_taken[lo:n])
        self._fin_lo = lo + (int(pending[0]) if len(pending) else n - lo)
        return ids, self.rec_f[2, ids].copy(), self.rec_i[2, ids].copy(), self.rec_i[0, ids].copy(), \
            self.rec_f[0, ids].copy()

    def stop_arrivals(self) -> None:
        """No new requests after this point (end of run): open-loop stream ends, users stop."""
        self.arr = np.zeros(0)
        self.st[S_PTR] = 0
        self.arrivals = None
        self.st[S_HEAP] = 0

    def records(self) -> dict[str, np.ndarray]:
        """Per-request records so far: views of the record arrays (no copy; valid until the next advance)."""
        n = int(self.st[S_NEXT_ID])
        return {"arrival_s": self.rec_f[0, :n], "dispatch_s": self.rec_f[1, :n],
                "completion_s": self.rec_f[2, :n], "replica": self.rec_i[0, :n],
                "batch_size": self.rec_i[1, :n], "status": self.rec_i[2, :n]}

    @property
    def n_requests(self) -> int:
        return int(self.st[S_NEXT_ID])
