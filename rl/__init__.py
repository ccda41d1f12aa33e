"""RL scaling policies trained in the simulator with RLlib, and the baselines they are compared with.

- :mod:`rl.env` -- gymnasium environment over the simulator library;
- :mod:`rl.train` -- ``python -m rl.train --algo ppo|appo|dqn``: RLlib training, exports ``policy.pt``;
- :mod:`rl.select` -- learning curve / snapshot selection on the tuning days;
- :mod:`rl.baselines` -- HPA (default, tuned), Knative KPA, IPA-style predictive, static; tuning;
- :mod:`rl.oracle` -- the future-knowing lower bound;
- :mod:`rl.evaluate` -- ``python -m rl.evaluate POLICY.pt --trace PATH --out DIR``.

Only :mod:`rl.train` (and a Ray cluster) needs Ray; a ``policy.pt`` is loaded by
:mod:`simulator.learned` with plain torch.
"""
