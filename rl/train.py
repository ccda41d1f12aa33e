"""``python -m rl.train --algo ppo`` -- train a population of scaling policies with RLlib on Ray Tune, select one.

A population is ``--seeds N`` training seeds (default ``population.seeds`` in ``configs/rl.yaml``: 5) times
an optional small hyper-parameter grid (``--grid lr=1e-4,3e-4 --grid lambda=1,2``, or ``population.grid``).
Its trials run in parallel through Ray Tune, as many at a time as the CPUs allow (one CPU per trial plus
one per remote env runner): on this machine by default, on a Ray cluster with ``--ray-address`` (then every
node needs servesim installed and ``--out`` must be on a filesystem all nodes see, as for Ray Tune's own
storage). The same command scales from here to a cluster::

    python -m rl.train --algo ppo --out runs/ppo                                    # 5 seeds, here
    python -m rl.train --algo ppo --seeds 3 --grid lr=1e-4,3e-4 --out runs/grid     # 3 x 2 trials
    python -m rl.train --algo ppo --seeds 20 --num-env-runners 4 --ray-address auto --out /shared/ppo
    python -m rl.train --resume runs/ppo                                            # finish a population

Writes into ``--out`` (default ``runs/<algo>-<time>``; an existing folder is refused unless an earlier
``rl.train`` wrote it and ``--force`` is given -- then it starts afresh -- or ``--resume`` continues it; never
another folder).

Every trial (``OUT/trials/<name>/``) writes ``progress.csv`` (env steps, episode return, SLO-violation
rate, mean replicas, provision ratio = mean replicas / replicas the offered load needs, seconds per
iteration, env steps/s, sampling and learner seconds), TensorBoard scalars in ``tb/``, a greedy
``snapshots/policy_iterNNNN.pt`` every ``--snapshot-every`` iterations and ``policy_final.pt``, an RLlib
``checkpoint/`` (``--resume``), ``curve.csv`` (every snapshot on the tuning windows, :mod:`rl.select`)
and its ``policy.pt``: the snapshot :func:`rl.select.pick` chooses on the tuning windows (days 11-12, never
the evaluation days). The population then picks its best trial by the same rule on the same windows and
exports it as ``OUT/policy.pt``; ``OUT/population.csv`` / ``population.json`` list every trial (seed,
hyper-parameters, selected iteration, tuning replica-seconds and SLO-violation rate, wall time) and
``OUT/run.json`` the settings, seed and derived values (capacity, trace scale, randomisation ranges).
The console shows a progress bar over all trials' iterations and one line per trial iteration.

``policy.pt`` is TorchScript + metadata (:mod:`simulator.learned`), loadable without Ray; its metadata
records the observation, action, reward, the domain-randomisation ranges and the training provenance.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import itertools
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Callable, Mapping

from rl.common import DEFAULT_CONFIG, GRID_KEYS, git_rev, is_pipeline, jsonable, load_rl_config, write_json
from simulator.io import OutputFolder, run_cli
from simulator.config import ConfigError

ALGOS = ("ppo", "appo", "dqn")
ACTION_PRESETS = {
    "delta": {"kind": "delta", "values": [-2, -1, 0, 1, 2, 3]},
    "rate": {"kind": "rate", "values": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]},
    "target": {"kind": "target", "values": "all"},
}


# --------------------------------------------------------------------------- RLlib pieces


def _callbacks_cls():
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class ServeSimMetrics(RLlibCallback):
        """Logs each finished episode's SLO-violation rate and mean replicas."""

        def on_episode_end(self, *, episode, metrics_logger=None, **kw):
            try:
                info = episode.get_infos(-1)
            except Exception:
                return
            tot = (info or {}).get("episode_totals")
            if tot and metrics_logger is not None:
                metrics_logger.log_value("slo_violation_rate", float(tot["slo_violation_rate"]), reduce="mean")
                metrics_logger.log_value("mean_replicas", float(tot["mean_replicas"]), reduce="mean")
                metrics_logger.log_value("failures", float(tot["failures"]), reduce="mean")
                metrics_logger.log_value("provision_ratio", float(tot["provision_ratio"]), reduce="mean")
                if math.isfinite(tot.get("accuracy", math.nan)):    # pipelines (rl.pipeline_env) that served
                    metrics_logger.log_value("accuracy", float(tot["accuracy"]), reduce="mean")

    return ServeSimMetrics


def check_algo(cfg: Mapping, algo: str) -> None:
    """ConfigError (one line) for an algorithm the scenario's action space rules out."""
    if is_pipeline(cfg) and algo == "dqn":
        raise ConfigError(f"--algo dqn: {cfg['scenario_path']} is a pipeline: its action is one choice per stage "
                          "(MultiDiscrete), which RLlib's DQN does not take; use ppo or appo")


def build_algo_config(algo: str, cfg: dict, args_tr: dict, num_env_runners: int, num_envs_per_runner: int,
                      seed: int):
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    check_algo(cfg, algo)
    if is_pipeline(cfg):
        from rl.pipeline_env import PipelineEnv as env_cls
    else:
        from rl.env import ServeSimEnv as env_cls
    tr = args_tr
    hidden = list(tr.get("hidden", [64, 64]))
    if algo == "ppo":
        from ray.rllib.algorithms.ppo import PPOConfig
        conf = PPOConfig().training(lr=tr["lr"], gamma=tr["gamma"], train_batch_size_per_learner=tr["train_batch_size"],
                                    minibatch_size=tr["minibatch_size"], num_epochs=tr["num_epochs"],
                                    entropy_coeff=tr["entropy_coeff"], vf_loss_coeff=0.5, lambda_=0.95,
                                    clip_param=0.2)
    elif algo == "appo":
        from ray.rllib.algorithms.appo import APPOConfig
        conf = APPOConfig().training(lr=tr["lr"], gamma=tr["gamma"], train_batch_size_per_learner=tr["train_batch_size"],
                                     entropy_coeff=tr["entropy_coeff"], vf_loss_coeff=0.5)
    elif algo == "dqn":
        from ray.rllib.algorithms.dqn import DQNConfig
        conf = DQNConfig().training(lr=tr["lr"], gamma=tr["gamma"], train_batch_size_per_learner=64, n_step=3,
                                    double_q=True, dueling=True, target_network_update_freq=500,
                                    num_steps_sampled_before_learning_starts=min(1000, tr["train_batch_size"]),
                                    epsilon=[[0, 1.0], [max(2000, 10 * tr["train_batch_size"]), 0.05]],
                                    replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer",
                                                          "capacity": 50000, "alpha": 0.6, "beta": 0.4})
    else:
        raise ConfigError(f"--algo: must be one of {', '.join(ALGOS)} (got {algo!r})")
    conf = (conf.api_stack(enable_rl_module_and_learner=True, enable_env_runner_and_connector_v2=True)
            .environment(env_cls, env_config={"cfg": cfg})
            .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=num_envs_per_runner,
                         rollout_fragment_length="auto" if algo != "dqn" else 4,
                         num_cpus_per_env_runner=1)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=hidden, fcnet_activation="tanh",
                                                       vf_share_layers=False))
            .callbacks(_callbacks_cls())
            .debugging(seed=seed, log_level="ERROR")
            .reporting(metrics_num_episodes_for_smoothing=20))
    if algo == "appo":
        # APPO samples asynchronously: it needs at least one remote EnvRunner; the learner stays in
        # the driver so that 2 CPUs suffice (on a cluster, add learners with RLlib's .learners()).
        conf = conf.env_runners(num_env_runners=max(1, num_env_runners)).learners(num_learners=0)
    return conf


# --------------------------------------------------------------------------- export


def export_policy(algo_obj, cfg: dict, out_path: str, provenance: dict) -> None:
    """Trace the RLModule's inference forward pass to TorchScript and save it with its metadata (a pipeline
    scenario's: :func:`rl.pipeline_env.pipeline_policy_meta`, one score per part of its MultiDiscrete action)."""
    import torch

    module = algo_obj.get_module()
    if is_pipeline(cfg):
        from rl.pipeline_env import pipeline_policy_meta
        from simulator.pipeline_learned import PipelineObsEncoder, action_sizes, save_pipeline_policy_file
        meta = pipeline_policy_meta(cfg, provenance)
        dim, n_act, save = PipelineObsEncoder(meta["obs"]).dim, sum(action_sizes(meta["action"])), \
            save_pipeline_policy_file
    else:
        from rl.env import obs_spec_for
        from simulator.learned import ObsEncoder, save_policy_file
        spec = obs_spec_for(cfg)
        dim = ObsEncoder(spec).dim
        n_act = len(cfg["env"]["action"]["values"])
        sc = cfg["scenario_dict"]
        meta = {
            "obs": spec, "action": dict(cfg["env"]["action"]), "interval_s": float(sc["autoscaler"]["interval_s"]),
            "scenario": {"name": cfg["scenario_name"], "path": os.path.relpath(cfg["scenario_path"]),
                         "hash": cfg["scenario_hash"], "slo_ms": sc["slo_ms"],
                         "min_replicas": sc["cluster"]["min_replicas"], "max_replicas": sc["cluster"]["max_replicas"],
                         "capacity_rps_per_replica": cfg["capacity_rps_per_replica"]},
            "reward": dict(cfg["env"]["reward"], norm=float(sc["autoscaler"]["interval_s"]) * sc["cluster"]["max_replicas"]),
            "randomize": dict(cfg["env"]["randomize"]),
            "training": provenance,
        }
        save = save_policy_file

    with torch.no_grad():
        probe = module.forward_inference({"obs": torch.zeros((2, dim))})
    if "action_dist_inputs" in probe:          # PPO / APPO: logits
        def scores(m, obs):
            return m.forward_inference({"obs": obs})["action_dist_inputs"]
    elif hasattr(module, "compute_q_values"):  # DQN: Q-values (its forward_inference returns only the argmax)
        def scores(m, obs):
            return m.compute_q_values({"obs": obs})["qf_preds"]
    else:
        raise RuntimeError(f"cannot export: the RLModule's forward_inference returns {sorted(probe)}")

    class _Greedy(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, obs):
            return scores(self.m, obs)

    w = _Greedy(module).eval()
    x = torch.randn((3, dim)) * 0.5
    with torch.no_grad():
        traced = torch.jit.trace(w, x, check_trace=False, strict=False)
        ref = w(x)
        got = traced(x)
        got1 = traced(x[:1])
    if tuple(got.shape) != (3, n_act) or not torch.allclose(ref, got, atol=1e-5) or \
            not torch.allclose(got1, ref[:1], atol=1e-5):
        raise RuntimeError("TorchScript export does not reproduce the RLModule's outputs")
    save(traced, meta, out_path)


# --------------------------------------------------------------------------- one trial


PROGRESS_FIELDS = ["iteration", "env_steps", "episodes", "episode_return_mean", "slo_violation_rate",
                   "mean_replicas", "provision_ratio", "failures_per_episode", "iter_s", "env_steps_per_s",
                   "sample_s", "learn_s"]


def _fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _timer(res: Mapping, *names) -> float | None:
    """A timer of an RLlib result (seconds), the first of ``names`` present."""
    t = res.get("timers") or {}
    for n in names:
        v = t.get(n)
        if isinstance(v, (int, float)):
            return float(v)
    return None


def iteration_row(res: Mapping, it: int, steps: int, dt: float) -> dict:
    """One ``progress.csv`` row from an RLlib result (with the episodes' mean ``accuracy`` when the env reports
    one: pipelines)."""
    er = res.get("env_runners", {})
    n = er.get("num_env_steps_sampled", 0) or 0
    extra = {"accuracy": er.get("accuracy")} if "accuracy" in er else {}
    return jsonable({**extra, "iteration": it, "env_steps": steps, "episodes": er.get("num_episodes_lifetime"),
                     "episode_return_mean": er.get("episode_return_mean"),
                     "slo_violation_rate": er.get("slo_violation_rate"), "mean_replicas": er.get("mean_replicas"),
                     "provision_ratio": er.get("provision_ratio"), "failures_per_episode": er.get("failures"),
                     "iter_s": round(dt, 2), "env_steps_per_s": round(n / dt, 1) if dt > 0 else None,
                     "sample_s": _timer(res, "env_runner_sampling_timer", "sample"),
                     "learn_s": _timer(res, "learner_update_timer", "learn_time_ms")})


def iteration_line(name: str, row: Mapping, total: int | None = None) -> str:
    it = f"{row['iteration']}" + (f"/{total}" if total else "")
    acc = f"accuracy {_fmt(row['accuracy'], 4)}  " if "accuracy" in row else ""
    return (f"[{name}] iter {it:>7s}  steps {row['env_steps']:8d}  return {_fmt(row['episode_return_mean'], 2):>8}  "
            f"SLO-viol {_fmt(row['slo_violation_rate'], 4)}  {acc}replicas {_fmt(row['mean_replicas'], 2)} "
            f"(x{_fmt(row['provision_ratio'], 2)} of load)  {row['iter_s']:.1f} s")


def train_trial(spec: Mapping[str, Any], report: Callable[[dict], None] | None = None) -> dict:
    """Train one trial of a population in this process (Ray initialised), select its snapshot on the tuning
    windows, write its folder; returns the trial's summary (also ``trial.json``). A trial whose
    ``trial.json`` exists is done (returned as is); one with a checkpoint continues from it."""
    import ray

    from rl.select import select_run
    d = spec["dir"]
    done = os.path.join(d, "trial.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    os.makedirs(d, exist_ok=True)
    cfg, tr, algo = spec["cfg"], dict(spec["training"]), spec["algo"]
    ckpt = os.path.join(d, "checkpoint")
    state = None
    if os.path.exists(os.path.join(ckpt, "train_state.json")):
        with open(os.path.join(ckpt, "train_state.json")) as f:
            state = json.load(f)
    t_start = time.time()
    conf = build_algo_config(algo, cfg, tr, spec["num_env_runners"], spec["num_envs_per_runner"], spec["seed"])
    algo_obj = conf.build_algo()
    it, steps, wall0 = 0, 0, 0.0
    if state is not None:
        algo_obj.restore_from_path(ckpt)
        it, steps, wall0 = state["iteration"], state["env_steps"], state.get("wall_s", 0.0)
    write_json(os.path.join(d, "run.json"), {
        "name": spec["name"], "algo": algo, "seed": spec["seed"], "hparams": spec["hparams"], "training": tr,
        "git": git_rev(), "started": _dt.datetime.now().isoformat(timespec="seconds"), "ray": ray.__version__,
        "cfg": {k: v for k, v in cfg.items() if k != "scenario_dict"}, "scenario": cfg["scenario_dict"],
        "resumed_at": it})
    from tensorboardX import SummaryWriter
    tb = SummaryWriter(os.path.join(d, "tb"))
    prog = os.path.join(d, "progress.csv")
    new = state is None or not os.path.exists(prog)
    pf = open(prog, "w" if new else "a", newline="")
    wr = csv.DictWriter(pf, fieldnames=PROGRESS_FIELDS + (["accuracy"] if is_pipeline(cfg) else []))
    if new:
        wr.writeheader()
    last: dict = {}

    def prov(row):
        return _provenance(algo, it, steps, spec, cfg, tr, row, ray.__version__)

    try:
        while (steps < spec["timesteps"]) if spec.get("timesteps") else (it < spec["iterations"]):
            t0 = time.time()
            res = algo_obj.train()
            dt = time.time() - t0
            it += 1
            steps += int(res.get("env_runners", {}).get("num_env_steps_sampled", 0) or 0)
            row = iteration_row(res, it, steps, dt)
            wr.writerow(row)
            pf.flush()
            for k, v in row.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    tb.add_scalar(f"servesim/{k}", v, steps)
            tb.flush()
            last = row
            if spec["snapshot_every"] and it % spec["snapshot_every"] == 0:
                os.makedirs(os.path.join(d, "snapshots"), exist_ok=True)
                export_policy(algo_obj, cfg, os.path.join(d, "snapshots", f"policy_iter{it:04d}.pt"), prov(row))
            if spec["checkpoint_every"] and it % spec["checkpoint_every"] == 0:
                _save(algo_obj, ckpt, it, steps, wall0 + time.time() - t_start)
            if report:
                report(dict(row, trial=spec["name"]))
        _save(algo_obj, ckpt, it, steps, wall0 + time.time() - t_start)
        export_policy(algo_obj, cfg, os.path.join(d, "policy_final.pt"), prov(last))
        last_snap = os.path.join(d, "snapshots", f"policy_iter{it:04d}.pt")
        if not os.path.exists(last_snap):                 # the last iteration is always a candidate
            os.makedirs(os.path.dirname(last_snap), exist_ok=True)
            shutil.copyfile(os.path.join(d, "policy_final.pt"), last_snap)
    finally:
        pf.close()
        tb.close()
        algo_obj.stop()
    train_s = wall0 + time.time() - t_start
    t_sel = time.time()
    sel = select_run(d, cfg, spec["select_seed"], dst_name="policy.pt")
    out = {"name": spec["name"], "seed": spec["seed"], "hparams": spec["hparams"], "algo": algo,
           "iterations": it, "env_steps": steps, "train_s": round(train_s, 1),
           "select_s": round(time.time() - t_sel, 1), "selected": sel["selected"], "meets": sel["meets"],
           "final": last, "dir": d}
    write_json(done, out)
    return out


def _provenance(algo, it, steps, spec, cfg, tr, last, ray_version) -> dict:
    return {"algo": algo, "iterations": it, "env_steps": steps, "seed": spec["seed"], "trial": spec["name"],
            "hparams": spec["hparams"], "git": git_rev(),
            "finished": _dt.datetime.now().isoformat(timespec="seconds"), "ray": ray_version,
            "train_days": cfg["trace"]["train_days"], "trace": os.path.basename(cfg["trace"]["path"]),
            "trace_scale": cfg["trace"]["scale"], "curriculum": cfg["curriculum"], "training": tr,
            "env": cfg["env"], "slo_target": cfg["slo_target"], "final": last,
            "config": os.path.relpath(cfg["config_path"]) if cfg.get("config_path") else None}


def _save(algo_obj, ckpt: str, it: int, steps: int, wall_s: float) -> None:
    algo_obj.save_to_path(ckpt)
    write_json(os.path.join(ckpt, "train_state.json"), {"iteration": it, "env_steps": steps, "wall_s": wall_s})


# --------------------------------------------------------------------------- the population


def parse_grid(items: list[str] | None, base: Mapping[str, list] | None = None) -> dict[str, list[float]]:
    """``["lr=1e-4,3e-4", "lambda=1,2"]`` over ``base`` (the config's ``population.grid``)."""
    grid = {k: list(v) for k, v in (base or {}).items()}
    for item in items or []:
        k, sep, vals = item.partition("=")
        k = k.strip()
        if not sep or k not in GRID_KEYS:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... with KEY one of {', '.join(GRID_KEYS)}")
        try:
            xs = [float(v) for v in vals.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--grid {item!r}: values must be numbers") from None
        if not xs or not all(math.isfinite(x) and x > 0 for x in xs):
            raise ConfigError(f"--grid {item!r}: values must be numbers > 0")
        grid[k] = [int(x) if k in ("train_batch_size", "minibatch_size", "num_epochs") and x == int(x) else x
                   for x in xs]
    return grid


def trial_specs(cfg: dict, tr: dict, algo: str, seeds: list[int], grid: Mapping[str, list], out: str,
                **common) -> list[dict]:
    """One spec per (grid point, seed): its name, folder, config and hyper-parameters."""
    import copy
    keys = sorted(grid)
    specs = []
    for point in itertools.product(*(grid[k] for k in keys)):
        hp = dict(zip(keys, point))
        tag = "-".join(f"{k}{v:g}" for k, v in hp.items())
        for s in seeds:
            c, t = copy.deepcopy(cfg), dict(tr)
            for k, v in hp.items():
                if k == "lambda":
                    c["env"]["reward"]["lambda"] = v
                else:
                    t[k] = v
            t["minibatch_size"] = min(t["minibatch_size"], t["train_batch_size"])
            name = f"seed{s}" + (f"-{tag}" if tag else "")
            specs.append(dict(common, name=name, seed=s, hparams=hp, cfg=c, training=t, algo=algo,
                              dir=os.path.abspath(os.path.join(out, "trials", name))))
    return specs


def _tune_trainable(config):
    """The Ray Tune function trainable: one trial (``config["spec"]``), per-iteration results reported."""
    from ray import tune
    out = train_trial(config["spec"], report=lambda row: tune.report(dict(row)))
    tune.report({"trial": out["name"], "finished": True, "iteration": out["iterations"],
                 "env_steps": out["env_steps"]})


def _console(total: int, names: dict, quiet: bool):
    from ray import tune
    from tqdm import tqdm

    class Console(tune.Callback):
        """A progress bar over every trial's iterations, one line per trial iteration."""

        def __init__(self):
            self.bar = tqdm(total=total, desc="population", unit="iter", disable=quiet or None,
                            dynamic_ncols=True)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("finished"):
                return
            self.bar.update(1)
            if not quiet and "env_steps" in result:
                self.bar.write(iteration_line(result.get("trial", "?"), result, names.get(result.get("trial"))))

        def on_trial_complete(self, iteration, trials, trial, **info):
            name = trial.config.get("spec", {}).get("name", str(trial))
            p = os.path.join(trial.config["spec"]["dir"], "trial.json")
            if os.path.exists(p) and not quiet:
                with open(p) as f:
                    t = json.load(f)
                sel = t["selected"]
                self.bar.write(f"[{name}] done in {t['train_s'] + t['select_s']:.0f} s: {sel['file']} selected "
                               f"(tuning windows: {sel['replica_seconds']:.0f} replica-s, SLO-viol "
                               f"{sel['slo_violation_rate']:.4f})")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.bar.write(f"[{trial.config.get('spec', {}).get('name', trial)}] FAILED (see {trial.local_path})")

        def on_experiment_end(self, trials, **info):
            self.bar.close()

    return Console()


def run_population(specs: list[dict], out: str, cpus_per_trial: int, quiet: bool = False) -> dict:
    """Run every spec as a Ray Tune trial (Ray initialised); returns ``{name: error or None}``."""
    from ray import tune
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    trainable = tune.with_resources(_tune_trainable, tune.PlacementGroupFactory(
        [{"CPU": 1}] + [{"CPU": 1}] * (cpus_per_trial - 1)))
    by_name = {s["name"]: s for s in specs}
    tuner = tune.Tuner(
        trainable, param_space={"spec": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(trial_name_creator=lambda t: t.config["spec"]["name"],
                                    trial_dirname_creator=lambda t: t.config["spec"]["name"], reuse_actors=False),
        run_config=tune.RunConfig(name="population", storage_path=os.path.abspath(os.path.join(out, "tune")),
                                  verbose=0, log_to_file=True,
                                  callbacks=[_console(sum(s["iterations"] for s in specs),
                                                      {n: s["iterations"] for n, s in by_name.items()}, quiet)],
                                  failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    errors = {}
    for r in grid:
        name = r.config["spec"]["name"]
        errors[name] = None if r.error is None else (str(r.error).strip().splitlines() or ["error"])[-1][:300]
    return errors


def population_rows(specs: list[dict]) -> list[dict]:
    """One row per finished trial (from its ``trial.json``)."""
    rows = []
    for s in specs:
        p = os.path.join(s["dir"], "trial.json")
        if not os.path.exists(p):
            continue
        with open(p) as f:
            t = json.load(f)
        sel = t["selected"]
        rows.append({"trial": t["name"], "seed": t["seed"], **{f"hp_{k}": v for k, v in t["hparams"].items()},
                     "iterations": t["iterations"], "env_steps": t["env_steps"],
                     "selected": sel["file"], "selected_iteration": sel["iteration"],
                     "replica_seconds": sel["replica_seconds"], "slo_violation_rate": sel["slo_violation_rate"],
                     **{k: sel[k] for k in PIPELINE_SELECTION if k in sel},
                     "meets": t["meets"], "train_s": t["train_s"], "select_s": t["select_s"],
                     "policy": os.path.relpath(os.path.join(s["dir"], "policy.pt"))})
    return rows


PIPELINE_SELECTION = ("accuracy", "mean_replicas", "ipa_cost")     # a pipeline trial's selection also reports


def print_population(rows: list[dict], chosen: str | None) -> None:
    hp = sorted({k for r in rows for k in r if k.startswith("hp_")})
    acc = all("accuracy" in r for r in rows)
    print(f"{'trial':24s} {'seed':>4s} " + "".join(f"{k[3:]:>9s} " for k in hp)
          + f"{'sel. iter':>9s} {'replica-s':>10s} {'SLO-viol':>9s} " + (f"{'accuracy':>9s} " if acc else "")
          + f"{'train s':>8s}")
    for r in rows:
        mark = " <- selected" if r["trial"] == chosen else ""
        print(f"{r['trial']:24s} {r['seed']:4d} " + "".join(f"{r.get(k, ''):>9g} " for k in hp)
              + f"{r['selected_iteration']!s:>9s} {r['replica_seconds']:10.0f} {r['slo_violation_rate']:9.4f} "
              + (f"{r['accuracy']:9.4f} " if acc else "") + f"{r['train_s']:8.0f}{mark}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="RL settings (default configs/rl.yaml)")
    ap.add_argument("--scenario", default=None, help="scenario YAML (overrides the config's; e.g. a calibrated one)")
    ap.add_argument("--trace", default=None, help="training trace CSV (header rps; overrides the config's)")
    ap.add_argument("--algo", choices=ALGOS, default=None, help="RLlib algorithm (default from config: ppo)")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds per grid point (default: population.seeds)")
    ap.add_argument("--grid", action="append", default=None, metavar="KEY=V1,V2",
                    help=f"hyper-parameter grid (repeatable; KEY in {', '.join(GRID_KEYS)})")
    ap.add_argument("--iterations", type=int, default=None, help="training iterations per trial (default from config)")
    ap.add_argument("--timesteps", type=int, default=None, help="stop each trial after this many env steps")
    ap.add_argument("--num-env-runners", type=int, default=0,
                    help="remote EnvRunner actors per trial (0 = sample in the trial's own process)")
    ap.add_argument("--num-envs-per-runner", type=int, default=1)
    ap.add_argument("--train-batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--lambda", dest="lam", type=float, default=None, help="override env.reward.lambda")
    ap.add_argument("--action", choices=tuple(ACTION_PRESETS), default=None,
                    help="action space preset (default: the config's env.action)")
    ap.add_argument("--history", type=int, default=None, help="observation frames stacked (default: config)")
    ap.add_argument("--features", choices=("basic", "extended"), default=None,
                    help="observation features (default: the config's env.features)")
    ap.add_argument("--randomize", choices=("auto", "on", "off"), default=None,
                    help="domain randomisation (default: the config's env.randomize.enabled)")
    ap.add_argument("--ray-address", default=None, help="connect to a Ray cluster (e.g. auto or ray://host:10001)")
    ap.add_argument("--num-cpus", type=int, default=None, help="local Ray CPUs (default: this machine's cores)")
    ap.add_argument("--seed", type=int, default=0, help="first training seed (trials use seed, seed+1, ...)")
    ap.add_argument("--out", default=None, help="output folder (default runs/<algo>-<time>)")
    ap.add_argument("--force", action="store_true",
                    help="start afresh in --out even if an earlier rl.train wrote it (never another folder)")
    ap.add_argument("--resume", default=None, metavar="OUT", help="finish the population in folder OUT "
                         "(finished trials are kept, the others continue; with --iterations, up to that many)")
    ap.add_argument("--checkpoint-every", type=int, default=5, help="RLlib checkpoint every N iterations (resume)")
    ap.add_argument("--snapshot-every", type=int, default=None,
                    help="greedy policy snapshot every N iterations (default: population.snapshot_every)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    return run_cli(lambda: _run(a), interrupted="interrupted (python -m rl.train --resume OUT continues)")


RESUME_KEYS = ("config", "scenario", "trace", "algo", "seeds", "grid", "iterations", "timesteps", "num_env_runners",
               "num_envs_per_runner", "train_batch_size", "lr", "lam", "action", "history", "features", "randomize",
               "seed", "snapshot_every", "checkpoint_every")


def _run(a) -> int:
    t_start = time.time()
    if a.resume:
        p = os.path.join(a.resume, "run.json")
        if not os.path.exists(p):
            raise ConfigError(f"--resume {a.resume}: no run.json there (not a population folder)")
        with open(p) as f:
            saved = json.load(f)["args"]
        given = a.iterations
        for k in RESUME_KEYS:
            setattr(a, k, saved.get(k))
        if given is not None:           # the unfinished trials stop at this many iterations instead
            a.iterations = given
        a.out = a.resume
    for flag, v in (("--seeds", a.seeds), ("--snapshot-every", a.snapshot_every), ("--history", a.history)):
        if v is not None and v < 1:
            raise ConfigError(f"{flag}: must be >= 1 (got {v})")
    if a.num_env_runners < 0 or a.num_envs_per_runner < 1:
        raise ConfigError("--num-env-runners must be >= 0 and --num-envs-per-runner >= 1")
    if a.iterations is not None and a.iterations < 1 and not a.timesteps:
        raise ConfigError("--iterations: must be >= 1")
    parse_grid(a.grid)
    ov: dict = {"env": {}}
    if a.action:
        ov["env"]["action"] = dict(ACTION_PRESETS[a.action])
    if a.history is not None:
        ov["env"]["history"] = a.history
    if a.features:
        ov["env"]["features"] = a.features
    if a.randomize:
        ov["env"]["randomize"] = {"enabled": {"auto": "auto", "on": True, "off": False}[a.randomize]}
    cfg = load_rl_config(a.config, scenario=a.scenario, trace=a.trace, overrides=ov)
    tr = dict(cfg["training"])
    pop = cfg["population"]
    algo = a.algo or tr.get("algo", "ppo")
    if algo not in ALGOS:
        raise ConfigError(f"training.algo: must be one of {', '.join(ALGOS)} (got {algo!r})")
    check_algo(cfg, algo)
    if a.train_batch_size:
        tr["train_batch_size"] = a.train_batch_size
        tr["minibatch_size"] = min(tr["minibatch_size"], a.train_batch_size)
    if a.lr:
        tr["lr"] = a.lr
    if a.lam is not None:
        cfg["env"]["reward"]["lambda"] = a.lam
    iterations = a.iterations if a.iterations is not None else int(tr["iterations"])
    if iterations < 1 and not a.timesteps:
        raise ConfigError("--iterations: must be >= 1")
    seeds_n = a.seeds if a.seeds is not None else int(pop["seeds"])
    snap = a.snapshot_every if a.snapshot_every is not None else int(pop["snapshot_every"])
    grid = parse_grid(a.grid, pop["grid"])
    out = a.out or os.path.join("runs", f"{algo}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    outf = OutputFolder(out, "rl.train", force=a.force and not a.resume, in_place=True, reuse=bool(a.resume),
                        flag="--resume" if a.resume else "--out",
                        legacy=lambda d: (d / "run.json").exists() and (d / "trials").is_dir())
    cpus_per_trial = 1 + a.num_env_runners
    specs = trial_specs(cfg, tr, algo, list(range(a.seed, a.seed + seeds_n)), grid, out,
                        iterations=iterations, timesteps=a.timesteps, num_env_runners=a.num_env_runners,
                        num_envs_per_runner=a.num_envs_per_runner, checkpoint_every=a.checkpoint_every,
                        snapshot_every=snap, select_seed=int(pop["select_seed"]))
    rnd = cfg["env"]["randomize"]
    write_json(os.path.join(out, "run.json"), {
        "args": vars(a), "algo": algo, "training": tr, "grid": grid, "seeds": [s["seed"] for s in specs],
        "trials": [s["name"] for s in specs], "git": git_rev(), "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "cfg": {k: v for k, v in cfg.items() if k != "scenario_dict"}, "scenario": cfg["scenario_dict"]})

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    import ray
    if a.ray_address:
        ray.init(address=a.ray_address, log_to_driver=False)
    else:
        ray.init(num_cpus=a.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=200 * 1024 * 1024, log_to_driver=False, configure_logging=True,
                 logging_level="ERROR")
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if cpus < cpus_per_trial:
            raise ConfigError(f"--num-env-runners {a.num_env_runners}: a trial needs {cpus_per_trial} CPUs, Ray has "
                              f"{cpus} (--num-cpus)")
        print(f"training a population of {len(specs)} {algo} trial(s) ({seeds_n} seed(s)"
              f"{' x ' + ' x '.join(f'{k} {v}' for k, v in grid.items()) if grid else ''}, {iterations} iterations "
              f"each, {min(len(specs), cpus // cpus_per_trial)} at a time on {cpus} CPUs) on {cfg['scenario_name']} "
              f"(interval {cfg['interval_s']:g} s, {capacity_text(cfg)}, "
              f"trace scale {cfg['trace']['scale']}, lambda {cfg['env']['reward']['lambda']}, features "
              f"{cfg['env']['features']}, domain randomisation "
              f"{'on ' + ', '.join(f'{k} x{rnd[k][0]:g}..{rnd[k][1]:g}' for k in ('service', 'startup', 'overhead', 'contention')) if rnd['active'] else 'off'})"
              f" -> {out}", flush=True)
        errors = run_population(specs, out, cpus_per_trial, a.quiet)
        return finish_population(specs, errors, cfg, out, time.time() - t_start)
    finally:
        ray.shutdown()
        outf.close()


def capacity_text(cfg: Mapping) -> str:
    """The per-replica capacity the run provisions with, for the console (a pipeline's: per stage and variant)."""
    if not is_pipeline(cfg):
        return f"capacity {cfg['capacity_rps_per_replica']:.1f} rps/replica"
    caps = cfg["pipeline"]["capacity_rps_per_replica"]
    return "capacity " + ", ".join(f"{n} " + "/".join(f"{v} {c:.1f}" for v, c in cap.items())
                                   for n, cap in zip(cfg["pipeline"]["stages"], caps)) + \
        f" rps/replica, accuracy weight {cfg['pipeline']['accuracy_weight']:.4g}"


def finish_population(specs: list[dict], errors: Mapping[str, str | None], cfg: Mapping, out: str,
                      wall_s: float) -> int:
    """Pick the best finished trial on the tuning windows, export it as ``OUT/policy.pt``, write and print
    the population table. Exit code 0, or 1 when no trial finished."""
    from rl.select import copy_atomic, cost_key, pick, write_csv
    rows = population_rows(specs)
    failed = [n for n, e in errors.items() if e]
    for n in failed:
        print(f"trial {n} failed: {errors[n]}", file=sys.stderr)
    if not rows:
        print(f"error: no trial of the population finished (logs in {os.path.join(out, 'tune')})", file=sys.stderr)
        return 1
    best, meets = pick(rows, float(cfg["slo_target"]), cost_key(cfg))
    src = next(s for s in specs if s["name"] == best["trial"])
    copy_atomic(os.path.join(src["dir"], "policy.pt"), os.path.join(out, "policy.pt"))
    write_csv(os.path.join(out, "population.csv"), rows)
    write_json(os.path.join(out, "population.json"), {
        "trials": rows, "selected": best["trial"], "meets": meets, "failed": {n: errors[n] for n in failed},
        "rule": f"the trial whose selected snapshot has the fewest replica-seconds on the tuning windows (days "
                f"{cfg['trace']['tune_days']}) with SLO-violation rate <= {cfg['slo_target']}; else the fewest "
                f"violations" if not is_pipeline(cfg) else
                f"the trial whose selected snapshot has the least ipa_cost (replica_weight "
                f"{cfg['pipeline']['replica_weight']:g} x mean replicas - accuracy) on the tuning windows (days "
                f"{cfg['trace']['tune_days']}) with SLO-violation rate <= {cfg['slo_target']}; else the fewest "
                f"violations", "slo_target": cfg["slo_target"], "wall_s": round(wall_s, 1),
        "finished": _dt.datetime.now().isoformat(timespec="seconds")})
    print()
    print_population(rows, best["trial"])
    print(f"\nselected {best['trial']} ({best['selected']}; {'meets' if meets else 'misses'} the SLO-violation "
          f"target {cfg['slo_target']} on the tuning windows) -> {os.path.join(out, 'policy.pt')} "
          f"(TorchScript; loads without Ray); population wall time {wall_s / 60:.1f} min", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
