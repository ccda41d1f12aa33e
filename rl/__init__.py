"""RL scaling policies trained in the simulator with RLlib, and the baselines they are compared with.

- :mod:`rl.env` -- gymnasium environment over the simulator library (domain randomisation per episode);
- :mod:`rl.drift` -- the deployment's drift: ``--perturb`` factors and the randomisation ranges;
- :mod:`rl.train` -- ``python -m rl.train --algo ppo|appo|dqn``: a population of RLlib trials on Ray Tune,
  the best on the tuning days exported as ``policy.pt``;
- :mod:`rl.select` -- snapshot / trial selection on the tuning days (one rule for both);
- :mod:`rl.baselines` -- HPA (default, tuned), Knative KPA, IPA-style predictive, static; tuning;
- :mod:`rl.oracle` -- the future-knowing lower bound;
- :mod:`rl.evaluate` -- ``python -m rl.evaluate POLICY.pt --trace PATH --out DIR``.

Only :mod:`rl.train` (and a Ray cluster) needs Ray; a ``policy.pt`` is loaded by
:mod:`simulator.learned` with plain torch.
"""
