"""Every file the project ships in configs/ loads with the loader that reads it (a comment line that lost its
``#`` made configs/text_encoder.yaml unreadable once, and no test saw it)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.config import load_measure_config
from rl.common import load_rl_config
from simulator.config import ConfigError, load_scenario

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
MEASUREMENT = ("baseline.yaml", "text_encoder.yaml", "pipeline.yaml")
RL = ("rl.yaml",)


def shipped(pattern):
    return sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.glob(pattern))


@pytest.mark.parametrize("name", shipped("*.yaml") + shipped("calibrated/*.yaml"))
def test_shipped_config_loads(name):
    path = str(CONFIGS / name)
    if name in MEASUREMENT:
        cfg = load_measure_config(path)
        assert cfg.runs, f"{name}: no measured runs"
    elif name in RL:
        load_rl_config(path)
    else:
        sc = load_scenario(path)
        assert sc.duration_s > 0


@pytest.mark.parametrize("name", shipped("k8s/*.yaml"))
def test_shipped_manifest_parses(name):
    docs = [d for d in yaml.safe_load_all((CONFIGS / name).read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_a_comment_line_without_hash_is_refused(tmp_path):
    # the check above can fail: the defect it guards against is one clear error
    bad = tmp_path / "m.yaml"
    bad.write_text((CONFIGS / "text_encoder.yaml").read_text().replace("# at 230 req/s", "at 230 req/s", 1))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_measure_config(str(bad))
