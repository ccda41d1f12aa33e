"""servesim simulator: a SimPy model of Triton serving with dynamic batching and autoscaling.

Library use::

    from simulator import load_scenario, simulate
    res = simulate(load_scenario("configs/example.yaml"))
    print(res.summary["latency_ms"])
"""
from simulator.config import ConfigError, Scenario, load_scenario, scenario_from_dict
from simulator.engine import Result, Simulation, simulate

__all__ = ["ConfigError", "Scenario", "load_scenario", "scenario_from_dict", "simulate", "Simulation", "Result"]
