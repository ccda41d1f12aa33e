"""Load forecasts for predictive policies: the peak arrival rate of the next few seconds from the recent past.

- :func:`max_forecast` (IPA's baseline predictor, Ghafouri et al. 2023): the largest rate observed in the
  window;
- :func:`trend_forecast`: ``max(max_forecast, the least-squares line through the window extrapolated to the
  end of the horizon)``: reacts earlier to ramps, never below the max predictor;
- ``lstm`` (:class:`LSTMForecaster`, IPA's predictor): a small torch LSTM over the last ``history`` interval
  rates (IPA's 120-s window) that answers the peak interval rate of the next ``horizon`` intervals. Recipe read
  from IPA's ``prediction-modules/lstm-module/train.py`` (github.com/reconfigurable-ml-pipeline/ipa): one LSTM
  layer of 25 units and a linear read-out, Adam on the mean squared error, seed 7, trained on the trace's
  training days only. Its inputs are the interval means a policy observes (``Observation.arrival_rps``; IPA
  feeds the per-second maxima of each 10-s step, which a policy here does not see), divided by their mean so
  the model is scale-free (trained on the raw trace, used on a scaled replay). The target is the peak interval
  rate over ``horizon = ceil((interval + start-up lead) / interval)`` intervals (:func:`lstm_horizon`): the
  configuration chosen now must carry the load until a later decision's replicas can be ready -- the horizon
  the pipeline oracle is told the truth over, and IPA's own target (the peak of the next two 10-s steps) at
  its interval and a lead of up to one step. Departures from IPA, stated: tanh LSTM cells (torch's; IPA's
  Keras layer uses relu), no L1 kernel penalty, 12 epochs of batches of 256 (IPA: 30 of 64), trained on
  days 1-10 (``simulator.workload.TRAIN_DAYS``, the RL training days; IPA: its first 14 days). Weights: trained
  on first use in seconds and cached in ``.cache/servesim/forecast/``, files named by the hash of the full recipe
  (:func:`lstm_recipe`: trace digest, days, interval, horizon, settings); a file shipped under
  ``simulator/data/forecast/`` with the same name is used first. With fewer than ``history`` observations, or
  a zero rate among them (an outage the model never saw), it falls back to the max predictor
  (:func:`make_forecaster`).

:class:`RateWindow` keeps the ``(time, rate)`` observations of the last ``window_s`` seconds (an observation
stamped ``t`` covers ``[t - interval, t)``: it is kept while ``t > now - window_s``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import deque

from simulator.schema import ConfigError


class RateWindow:
    def __init__(self, window_s: float):
        self.window_s = float(window_s)
        self.points: deque[tuple[float, float]] = deque()

    def add(self, t: float, rate: float) -> None:
        self.points.append((float(t), float(rate)))
        self.trim(t)

    def trim(self, now: float) -> None:
        """Drop the observations that no longer overlap ``(now - window_s, now]``."""
        while self.points and self.points[0][0] <= now - self.window_s:
            self.points.popleft()

    def clear(self) -> None:
        self.points.clear()


def max_forecast(points) -> float:
    """The largest rate in ``points`` ((t, rate) pairs); 0 when empty."""
    return max((v for _, v in points), default=0.0)


def trend_forecast(points, at: float) -> float:
    """``max(max_forecast, least-squares line through points evaluated at time at)`` (needs 3 points for a
    line; fewer: the max)."""
    pts = list(points)
    peak = max_forecast(pts)
    if len(pts) < 3:
        return peak
    mt = sum(t for t, _ in pts) / len(pts)
    mv = sum(v for _, v in pts) / len(pts)
    sxx = sum((t - mt) ** 2 for t, _ in pts)
    if sxx <= 0:
        return peak
    slope = sum((t - mt) * (v - mv) for t, v in pts) / sxx
    return max(peak, mv + slope * (at - mt))


# --------------------------------------------------------------------------- the LSTM forecaster

# IPA's recipe (prediction-modules/lstm-module/train.py of github.com/reconfigurable-ml-pipeline/ipa): 120 s of
# history in 10-s steps, one LSTM layer of 25 units and a dense output, Adam on the mean squared error, seed 7,
# trained on the first 14 days of its Twitter trace; target: the peak rate of the next two steps.
LSTM_WINDOW_S = 120.0
LSTM_HIDDEN = 25
LSTM_EPOCHS = 12
LSTM_BATCH = 256
LSTM_LR = 1e-3
LSTM_SEED = 7
LSTM_FORMAT = "servesim-lstm-forecaster/1"


def interval_means(per_second, interval_s: float) -> "np.ndarray":
    """Mean arrival rate of each whole ``interval_s`` of a per-second rate series: what a policy observes as
    ``arrival_rps`` at each tick (the trailing part shorter than an interval is dropped)."""
    import numpy as np
    x = np.asarray(per_second, dtype=float)
    n = int(interval_s)
    if n < 1 or abs(interval_s - n) > 1e-9:
        raise ValueError(f"interval_s must be a whole number of seconds (got {interval_s})")
    return x[: len(x) // n * n].reshape(-1, n).mean(1)


def peak_ahead(series, horizon: int) -> "np.ndarray":
    """``out[i] = max(series[i + 1 : i + 1 + horizon])`` (NaN where the horizon runs past the end): the forecast
    target at tick ``i``, the largest interval rate of the next ``horizon`` intervals."""
    import numpy as np
    x = np.asarray(series, dtype=float)
    out = np.full(len(x), np.nan)
    for i in range(len(x) - horizon):
        out[i] = x[i + 1: i + 1 + horizon].max()
    return out


def lstm_samples(series, history: int, horizon: int):
    """Training pairs of a series of interval rates: inputs the last ``history`` rates (ending at tick ``i``) and
    target :func:`peak_ahead`, both divided by the inputs' mean (the model is scale-free: trained on the raw trace,
    it forecasts a scaled replay). Windows touching a zero rate (trace outages; IPA drops them too) are left out.
    Returns ``(X [n, history], y [n])`` float32."""
    import numpy as np
    x = np.asarray(series, dtype=float)
    target = peak_ahead(x, horizon)
    n = len(x) - history - horizon + 1
    if n <= 0:
        return np.zeros((0, history), np.float32), np.zeros(0, np.float32)
    idx = np.arange(history - 1, history - 1 + n)
    X = np.stack([x[i - history + 1: i + 1] for i in idx])
    y = target[idx]
    ok = (X > 0).all(1) & (x[idx[:, None] + np.arange(1, horizon + 1)] > 0).all(1)
    X, y = X[ok], y[ok]
    m = X.mean(1, keepdims=True)
    return (X / m).astype(np.float32), (y / m[:, 0]).astype(np.float32)


def _lstm_module(hidden: int):
    import torch

    class PeakLSTM(torch.nn.Module):
        """One LSTM layer over the normalised rates, a linear read-out of its last state (IPA's shape)."""

        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(1, hidden, batch_first=True)
            self.out = torch.nn.Linear(hidden, 1)

        def forward(self, x):
            h, _ = self.lstm(x.unsqueeze(-1))
            return self.out(h[:, -1]).squeeze(-1)

    return PeakLSTM()


def train_lstm(series, history: int, horizon: int, *, hidden: int = LSTM_HIDDEN, epochs: int = LSTM_EPOCHS,
               batch: int = LSTM_BATCH, lr: float = LSTM_LR, seed: int = LSTM_SEED, progress: bool = False):
    """Train the peak forecaster on ``series`` (interval rates; a list of series is trained as one set of
    windows) by Adam on the mean squared error of the normalised target (:func:`lstm_samples`). Deterministic
    for a seed: the initial weights and the batch order come from it, and training runs on one thread. Returns
    ``(state_dict, losses)`` (mean training loss per epoch)."""
    import numpy as np
    import torch
    parts = [lstm_samples(s, history, horizon) for s in (series if isinstance(series, list) else [series])]
    X = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(X) < batch:
        raise ValueError(f"too little history to train the LSTM forecaster: {len(X)} windows (need >= {batch})")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = _lstm_module(hidden)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        losses = []
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=epochs, desc="training the LSTM forecaster", unit="epoch")
        for _ in range(epochs):
            perm = torch.randperm(len(Xt), generator=gen)
            total = 0.0
            for i in range(0, len(perm), batch):
                j = perm[i:i + batch]
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(Xt[j]), yt[j])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(j)
            losses.append(total / len(Xt))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if bar is not None:
            bar.close()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses


class LSTMForecaster:
    """A trained peak forecaster (:func:`train_lstm`): ``history`` interval rates in, the peak interval rate of the
    next ``horizon`` intervals out. ``meta`` records the recipe (trace, days, interval, seed, epochs, losses)."""

    def __init__(self, state: dict, history: int, horizon: int, interval_s: float, hidden: int = LSTM_HIDDEN,
                 meta: dict | None = None):
        import torch
        self.history, self.horizon, self.interval_s = int(history), int(horizon), float(interval_s)
        self.meta = dict(meta or {})
        self.model = _lstm_module(int(hidden))
        self.model.load_state_dict(state)
        self.model.eval()
        self._torch = torch

    def predict(self, rates) -> float | None:
        """The forecast from the last ``history`` rates (oldest first), or None when there are fewer, or when one
        is not positive (the model never saw an outage: the caller falls back to the max predictor)."""
        r = [float(v) for v in rates][-self.history:]
        if len(r) < self.history or min(r) <= 0:
            return None
        m = sum(r) / len(r)
        with self._torch.no_grad():
            z = float(self.model(self._torch.tensor([[v / m for v in r]], dtype=self._torch.float32))[0])
        return max(0.0, z * m)

    def predict_series(self, series) -> "np.ndarray":
        """The forecast at every tick of a series of interval rates, as :meth:`predict` would answer it live, in one
        batch; the max predictor (:func:`window_max_series`) where :meth:`predict` answers None."""
        import numpy as np
        x = np.asarray(series, dtype=float)
        out = window_max_series(x, self.history)
        idx = np.arange(self.history - 1, len(x))
        if len(idx) == 0:
            return out
        X = np.stack([x[i - self.history + 1: i + 1] for i in idx])
        ok = (X > 0).all(1)
        X, idx = X[ok], idx[ok]
        if len(idx):
            m = X.mean(1, keepdims=True)
            with self._torch.no_grad():
                z = self.model(self._torch.from_numpy((X / m).astype(np.float32))).numpy().astype(float)
            out[idx] = np.maximum(0.0, z * m[:, 0])
        return out

    def save(self, path: str) -> None:
        import torch
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        torch.save({"format": LSTM_FORMAT, "state": self.model.state_dict(), "history": self.history,
                    "horizon": self.horizon, "interval_s": self.interval_s,
                    "hidden": self.model.lstm.hidden_size, "meta": self.meta}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "LSTMForecaster":
        import torch
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(f"{path}: not an LSTM forecaster file ({type(e).__name__}: {e})") from None
        if not isinstance(d, dict) or d.get("format") != LSTM_FORMAT:
            raise ConfigError(f"{path}: not an LSTM forecaster file (format {LSTM_FORMAT!r} expected)")
        return cls(d["state"], d["history"], d["horizon"], d["interval_s"], d["hidden"], d["meta"])


def lstm_recipe(interval_s: float, horizon: int, trace: str | None = None, days=None) -> dict:
    """The full recipe of the forecaster for ``interval_s`` / ``horizon``: the shipped Twitter trace's training
    days (``simulator.workload.TRAIN_DAYS``: days 1-10; never the tuning or held-out days) unless given, IPA's 120-s window,
    and the training settings above. Its hash names the cached file."""
    if trace is None or days is None:
        from simulator.workload import SHIPPED_TRACE, TRAIN_DAYS
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        trace = trace or os.path.join(root, SHIPPED_TRACE)
        days = days or list(TRAIN_DAYS)
    digest = _file_digest(trace)
    return {"trace": os.path.basename(trace), "trace_sha256": digest, "days": [int(d) for d in days],
            "interval_s": float(interval_s), "history": lstm_history(interval_s), "horizon": int(horizon),
            "hidden": LSTM_HIDDEN, "epochs": LSTM_EPOCHS, "batch": LSTM_BATCH, "lr": LSTM_LR, "seed": LSTM_SEED,
            "loss": "mse of peak / window mean"}, trace


_DIGESTS: dict[tuple, str] = {}


def _file_digest(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[key] = hashlib.sha256(f.read()).hexdigest()[:16]
    return _DIGESTS[key]


def lstm_history(interval_s: float) -> int:
    """Intervals of history the LSTM reads: IPA's 120-s window in whole intervals (at least 2)."""
    return max(2, int(round(LSTM_WINDOW_S / float(interval_s))))


def lstm_horizon(interval_s: float, lead_s: float) -> int:
    """Intervals the forecast covers: the coming interval plus the start-up lead a replica asked for now needs,
    in whole intervals, ``ceil((interval + lead) / interval)`` -- the horizon the pipeline oracle is told the
    truth over (IPA: the next two 10-s steps)."""
    return max(1, int(math.ceil(round((float(interval_s) + float(lead_s)) / float(interval_s), 9))))


SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "forecast")
CACHE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache", "servesim",
                         "forecast")
_LOADED: dict[str, LSTMForecaster] = {}


def lstm_forecaster(interval_s: float, horizon: int, trace: str | None = None, days=None,
                    progress: bool = True) -> LSTMForecaster:
    """The LSTM forecaster for this recipe (:func:`lstm_recipe`): the shipped file under ``simulator/data/forecast``
    when one matches, else the cached one under ``.cache/servesim/forecast``, else trained now (seconds; printed)
    and cached. Files are named by the recipe's hash, so a changed trace, split or setting trains anew."""
    from simulator.workload import day_range, load_trace
    if not (float(interval_s) >= 1 and float(interval_s).is_integer()):
        raise ConfigError(f"forecast lstm: the control interval must be a whole number of seconds (got "
                          f"{interval_s:g}): the model reads the trace's per-second rates in whole intervals")
    recipe, path = lstm_recipe(interval_s, horizon, trace, days)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    if key in _LOADED:
        return _LOADED[key]
    name = f"lstm-{key}.pt"
    for d in (SHIPPED_DIR, CACHE_DIR):
        if os.path.exists(os.path.join(d, name)):
            _LOADED[key] = LSTMForecaster.load(os.path.join(d, name))
            return _LOADED[key]
    rates = load_trace(path)
    a, b = day_range(recipe["days"], len(rates), "forecast training days")
    series = interval_means(rates[a:b], interval_s)
    print(f"training the LSTM forecaster ({recipe['history']} x {interval_s:g}-s intervals in, peak of the next "
          f"{horizon} out; {recipe['trace']} days {recipe['days'][0]}-{recipe['days'][1]}) -> {CACHE_DIR}/{name}",
          flush=True)
    state, losses = train_lstm(series, recipe["history"], horizon, progress=progress)
    fc = LSTMForecaster(state, recipe["history"], horizon, interval_s, meta=dict(recipe, losses=losses))
    fc.save(os.path.join(CACHE_DIR, name))
    _LOADED[key] = fc
    return fc


def window_max_series(series, history: int) -> "np.ndarray":
    """The max predictor at every tick of a series of interval rates: ``max(series[i - history + 1 : i + 1])``
    (the window so far at the start)."""
    import numpy as np
    x = np.asarray(series, dtype=float)
    return np.array([x[max(0, i - history + 1): i + 1].max() for i in range(len(x))])


def forecast_error(forecasts, series, horizon: int) -> dict:
    """How forecasts did on a series of interval rates: ``forecasts[i]`` made at tick ``i`` against the target
    :func:`peak_ahead` (ticks without a positive target left out). Returns the mean absolute error relative to
    the target (``mape``), the root mean squared error (``rmse_rps``), the share of ticks forecast below the
    target (``under``: what costs SLO violations) and the mean relative shortfall (``mean_shortfall``, 0 for a
    tick forecast at or above its target)."""
    import numpy as np
    f = np.asarray(forecasts, dtype=float)
    t = peak_ahead(series, horizon)
    ok = np.isfinite(t) & (t > 0)
    f, t = f[ok], t[ok]
    return {"ticks": int(len(t)), "mape": float(np.mean(np.abs(f - t) / t)),
            "rmse_rps": float(np.sqrt(np.mean((f - t) ** 2))), "under": float(np.mean(f < t)),
            "mean_shortfall": float(np.mean(np.clip(t - f, 0, None) / t))}

FORECASTS = ("max", "trend", "lstm")


class Forecaster:
    """One forecast rule behind one call, ``forecaster(points, at) -> rate``, for the policies that take a
    ``forecast`` setting: ``max``, ``trend`` or ``lstm`` (the max predictor while the LSTM cannot answer;
    ``fallbacks`` counts those ticks)."""

    def __init__(self, kind: str, lstm: LSTMForecaster | None = None):
        if kind not in FORECASTS:
            raise ValueError(f"forecast: {kind!r} is not one of {', '.join(FORECASTS)}")
        if kind == "lstm" and lstm is None:
            raise ValueError("forecast lstm needs a trained LSTMForecaster")
        self.kind, self.lstm = kind, lstm
        self.fallbacks = 0

    def __call__(self, points, at: float) -> float:
        if self.kind == "trend":
            return trend_forecast(points, at)
        if self.kind == "lstm":
            v = self.lstm.predict([r for _, r in points])
            if v is not None:
                return v
            self.fallbacks += 1
        return max_forecast(points)


def make_forecaster(kind: str, interval_s: float, lead_s: float) -> Forecaster:
    """The :class:`Forecaster` of ``kind`` for a policy deciding every ``interval_s`` whose new replicas take
    ``lead_s`` to start (``lstm``: :func:`lstm_forecaster` of that interval and :func:`lstm_horizon`)."""
    if kind != "lstm":
        return Forecaster(kind)
    return Forecaster(kind, lstm_forecaster(interval_s, lstm_horizon(interval_s, lead_s)))


__all__ = ["RateWindow", "max_forecast", "trend_forecast", "FORECASTS", "Forecaster", "make_forecaster",
           "LSTMForecaster", "lstm_forecaster", "lstm_recipe", "lstm_history", "lstm_horizon", "train_lstm",
           "lstm_samples", "interval_means", "peak_ahead", "forecast_error", "window_max_series"]
