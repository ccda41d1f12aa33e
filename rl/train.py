"""``python -m rl.train --algo ppo`` -- train a scaling policy in the simulator with RLlib; export ``policy.pt``.

Uses RLlib's new API stack (RLModule / Learner / EnvRunner). The same command
scales from this machine to a Ray cluster::

    python -m rl.train --algo ppo --iterations 20 --out runs/ppo              # local, 2 CPUs
    python -m rl.train --algo appo --num-env-runners 32 --num-envs-per-runner 4 \\
        --timesteps 5000000 --ray-address auto --out runs/appo                 # a Ray cluster
    python -m rl.train --resume runs/ppo --iterations 40                       # continue a run

Writes into ``--out`` (default ``runs/<algo>-<time>``; an existing folder is
refused unless an earlier ``rl.train`` wrote it and ``--force`` is given -- then
it starts afresh -- or ``--resume`` continues it; never another folder):

- ``progress.csv`` / per-iteration console line: env steps, episode return,
  SLO-violation rate, mean replicas (cost) and provision ratio (mean replicas /
  replicas the offered load needs at the per-replica capacity: cost with the
  episode's load factored out) of the episodes of the iteration;
- ``tb/``: TensorBoard scalars (``tensorboard --logdir OUT/tb``);
- ``checkpoint/``: the latest RLlib checkpoint (every ``--checkpoint-every``
  iterations and at the end) plus ``train_state.json``; ``--resume OUT``
  continues from it with the run's saved settings;
- ``policy.pt``: TorchScript policy + metadata (:mod:`simulator.learned`),
  loadable without Ray; ``snapshots/policy_iterNNNN.pt`` at every checkpoint
  (for learning curves / model selection on the tuning days with
  ``python -m rl.select``); ``run.json``: settings, seed, provenance.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import sys
import time

from rl.common import DEFAULT_CONFIG, git_rev, jsonable, load_rl_config, write_json
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

    return ServeSimMetrics


def build_algo_config(algo: str, cfg: dict, args_tr: dict, num_env_runners: int, num_envs_per_runner: int,
                      seed: int):
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    from rl.env import ServeSimEnv
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
            .environment(ServeSimEnv, env_config={"cfg": cfg})
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
    """Trace the RLModule's inference forward pass to TorchScript and save it with its metadata."""
    import torch

    from rl.env import obs_spec_for
    from simulator.learned import ObsEncoder, save_policy_file
    module = algo_obj.get_module()
    spec = obs_spec_for(cfg)
    dim = ObsEncoder(spec).dim
    n_act = len(cfg["env"]["action"]["values"])

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
    sc = cfg["scenario_dict"]
    meta = {
        "obs": spec, "action": dict(cfg["env"]["action"]), "interval_s": float(sc["autoscaler"]["interval_s"]),
        "scenario": {"name": cfg["scenario_name"], "path": os.path.relpath(cfg["scenario_path"]),
                     "hash": cfg["scenario_hash"], "slo_ms": sc["slo_ms"],
                     "min_replicas": sc["cluster"]["min_replicas"], "max_replicas": sc["cluster"]["max_replicas"],
                     "capacity_rps_per_replica": cfg["capacity_rps_per_replica"]},
        "reward": dict(cfg["env"]["reward"], norm=float(sc["autoscaler"]["interval_s"]) * sc["cluster"]["max_replicas"]),
        "training": provenance,
    }
    save_policy_file(traced, meta, out_path)


# --------------------------------------------------------------------------- main


def _fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rl.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_CONFIG, help="RL settings (default configs/rl.yaml)")
    ap.add_argument("--scenario", default=None, help="scenario YAML (overrides the config's; e.g. a calibrated one)")
    ap.add_argument("--trace", default=None, help="training trace CSV (header rps; overrides the config's)")
    ap.add_argument("--algo", choices=ALGOS, default=None, help="RLlib algorithm (default from config: ppo)")
    ap.add_argument("--iterations", type=int, default=None, help="training iterations (default from config)")
    ap.add_argument("--timesteps", type=int, default=None, help="stop after this many env steps (overrides --iterations)")
    ap.add_argument("--num-env-runners", type=int, default=0, help="remote EnvRunner actors (0 = sample in the driver)")
    ap.add_argument("--num-envs-per-runner", type=int, default=1)
    ap.add_argument("--train-batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--lambda", dest="lam", type=float, default=None, help="override env.reward.lambda")
    ap.add_argument("--action", choices=tuple(ACTION_PRESETS), default=None,
                    help="action space preset (default: the config's env.action)")
    ap.add_argument("--history", type=int, default=None, help="observation frames stacked (default: config)")
    ap.add_argument("--ray-address", default=None, help="connect to a Ray cluster (e.g. auto or ray://host:10001)")
    ap.add_argument("--num-cpus", type=int, default=2, help="local Ray CPUs when not connecting to a cluster")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output folder (default runs/<algo>-<time>)")
    ap.add_argument("--force", action="store_true",
                    help="start afresh in --out even if an earlier rl.train wrote it (never another folder)")
    ap.add_argument("--resume", default=None, metavar="OUT", help="continue the run in folder OUT from its checkpoint")
    ap.add_argument("--checkpoint-every", type=int, default=5)
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    return run_cli(lambda: _run(a), interrupted='interrupted (the last checkpoint, if any, is in OUT/checkpoint)')


def _run(a) -> int:
    state = None
    if a.resume:
        st = os.path.join(a.resume, "checkpoint", "train_state.json")
        if not os.path.exists(st):
            raise ConfigError(f"--resume {a.resume}: no checkpoint/train_state.json there")
        with open(st) as f:
            state = json.load(f)
        saved = state["args"]
        for k in ("config", "scenario", "trace", "algo", "seed", "train_batch_size", "lr", "lam",
                  "num_envs_per_runner", "action", "history"):
            if getattr(a, k) in (None, ap_default(k)):
                setattr(a, k, saved.get(k))
        a.out = a.resume
    ov: dict = {"env": {}}
    if a.action:
        ov["env"]["action"] = dict(ACTION_PRESETS[a.action])
    if a.history is not None:
        if a.history < 1:
            raise ConfigError("--history: must be >= 1")
        ov["env"]["history"] = a.history
    cfg = load_rl_config(a.config, scenario=a.scenario, trace=a.trace, overrides=ov)
    tr = dict(cfg["training"])
    algo = a.algo or tr.get("algo", "ppo")
    if algo not in ALGOS:
        raise ConfigError(f"training.algo: must be one of {', '.join(ALGOS)} (got {algo!r})")
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
    if a.num_env_runners < 0 or a.num_envs_per_runner < 1:
        raise ConfigError("--num-env-runners must be >= 0 and --num-envs-per-runner >= 1")
    out = a.out or os.path.join("runs", f"{algo}-{_dt.datetime.now():%Y%m%d-%H%M%S}")
    outf = OutputFolder(out, "rl.train", force=a.force and not a.resume, in_place=True, reuse=bool(a.resume),
                        flag="--resume" if a.resume else "--out",
                        legacy=lambda d: (d / "checkpoint" / "train_state.json").exists())
    ckpt = os.path.abspath(os.path.join(out, "checkpoint"))

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    if a.ray_address:
        ray.init(address=a.ray_address, log_to_driver=False)
    else:
        ray.init(num_cpus=a.num_cpus, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
                 log_to_driver=False, configure_logging=True, logging_level="ERROR")
    try:
        conf = build_algo_config(algo, cfg, tr, a.num_env_runners, a.num_envs_per_runner, a.seed)
        algo_obj = conf.build_algo()
        it0, steps0 = 0, 0
        if state is not None:
            algo_obj.restore_from_path(ckpt)
            it0, steps0 = state["iteration"], state["env_steps"]
            print(f"resumed {out} at iteration {it0} ({steps0} env steps)", flush=True)
        run_info = {"algo": algo, "args": vars(a), "training": tr, "seed": a.seed, "git": git_rev(),
                    "started": _dt.datetime.now().isoformat(timespec="seconds"),
                    "cfg": {k: v for k, v in cfg.items() if k != "scenario_dict"},
                    "scenario": cfg["scenario_dict"], "ray": ray.__version__}
        write_json(os.path.join(out, "run.json"), run_info)
        from tensorboardX import SummaryWriter
        tb = SummaryWriter(os.path.join(out, "tb"))
        prog_path = os.path.join(out, "progress.csv")
        new_file = not os.path.exists(prog_path) or state is None
        fields = ["iteration", "env_steps", "episodes", "episode_return_mean", "slo_violation_rate",
                  "mean_replicas", "provision_ratio", "failures_per_episode", "iter_s", "env_steps_per_s"]
        pf = open(prog_path, "w" if new_file else "a", newline="")
        wr = csv.DictWriter(pf, fieldnames=fields)
        if new_file:
            wr.writeheader()
        print(f"training {algo} on {cfg['scenario_name']} (interval {cfg['interval_s']:g} s, capacity "
              f"{cfg['capacity_rps_per_replica']:.1f} rps/replica, trace scale {cfg['trace']['scale']}, "
              f"lambda {cfg['env']['reward']['lambda']}) -> {out}", flush=True)
        it, steps = it0, steps0
        last = {}
        target_it = it0 + iterations
        while True:
            if a.timesteps:
                if steps >= a.timesteps:
                    break
            elif it >= target_it:
                break
            t0 = time.time()
            res = algo_obj.train()
            dt = time.time() - t0
            it += 1
            er = res.get("env_runners", {})
            steps += int(er.get("num_env_steps_sampled", 0) or 0)
            row = {"iteration": it, "env_steps": steps, "episodes": er.get("num_episodes_lifetime"),
                   "episode_return_mean": er.get("episode_return_mean"),
                   "slo_violation_rate": er.get("slo_violation_rate"), "mean_replicas": er.get("mean_replicas"),
                   "provision_ratio": er.get("provision_ratio"),
                   "failures_per_episode": er.get("failures"), "iter_s": round(dt, 2),
                   "env_steps_per_s": round(er.get("num_env_steps_sampled", 0) / dt, 1) if dt > 0 else None}
            row = jsonable(row)
            wr.writerow(row)
            pf.flush()
            for k, v in row.items():
                if k != "iteration" and isinstance(v, (int, float)):
                    tb.add_scalar(f"servesim/{k}", v, steps)
            tb.flush()
            last = row
            if not a.quiet:
                print(f"iter {it:4d}  steps {steps:8d}  return {_fmt(row['episode_return_mean'], 2):>8}  "
                      f"SLO-viol {_fmt(row['slo_violation_rate'], 4)}  replicas {_fmt(row['mean_replicas'], 2)}  "
                      f"(x{_fmt(row['provision_ratio'], 2)} of load)  "
                      f"({dt:.1f} s)", flush=True)
            if a.checkpoint_every and it % a.checkpoint_every == 0:
                _save(algo_obj, ckpt, it, steps, a)
                os.makedirs(os.path.join(out, "snapshots"), exist_ok=True)
                export_policy(algo_obj, cfg, os.path.join(out, "snapshots", f"policy_iter{it:04d}.pt"),
                              _provenance(algo, it, steps, a, cfg, tr, row, ray.__version__))
        _save(algo_obj, ckpt, it, steps, a)
        pf.close()
        tb.close()
        prov = _provenance(algo, it, steps, a, cfg, tr, last, ray.__version__)
        pt = os.path.join(out, "policy.pt")
        export_policy(algo_obj, cfg, pt, prov)
        print(f"wrote {pt} (TorchScript; loads without Ray) and {ckpt}", flush=True)
        algo_obj.stop()
    finally:
        ray.shutdown()
        outf.close()
    return 0


def _provenance(algo, it, steps, a, cfg, tr, last, ray_version) -> dict:
    return {"algo": algo, "iterations": it, "env_steps": steps, "seed": a.seed, "git": git_rev(),
            "finished": _dt.datetime.now().isoformat(timespec="seconds"), "ray": ray_version,
            "train_days": cfg["trace"]["train_days"], "trace": os.path.basename(cfg["trace"]["path"]),
            "trace_scale": cfg["trace"]["scale"], "curriculum": cfg["curriculum"], "training": tr,
            "env": cfg["env"], "slo_target": cfg["slo_target"], "final": last,
            "config": os.path.relpath(cfg["config_path"]) if cfg.get("config_path") else None}


def ap_default(k):
    return {"config": DEFAULT_CONFIG, "seed": 0, "num_envs_per_runner": 1}.get(k)


def _save(algo_obj, ckpt: str, it: int, steps: int, a) -> None:
    algo_obj.save_to_path(ckpt)
    write_json(os.path.join(ckpt, "train_state.json"), {"iteration": it, "env_steps": steps, "args": vars(a)})


if __name__ == "__main__":
    sys.exit(main())
