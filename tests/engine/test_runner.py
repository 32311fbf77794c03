"""DdetrRunner's refusals that are a user's mistake, not a bug: a launcher that cannot run
without GPUs names the one that can."""
import pytest
from mmengine.config import ConfigDict

from ddetr.engine.runner import setup_cpu_distributed
from ddetr.errors import ConfigError


@pytest.mark.parametrize('launcher', ['slurm', 'mpi'])
def test_a_launcher_that_needs_gpus_is_refused_naming_pytorch(launcher):
    cfg = ConfigDict(launcher=launcher)
    with pytest.raises(ConfigError, match=f'--launcher {launcher} without GPUs: use pytorch'):
        setup_cpu_distributed(cfg)
    assert 'model_wrapper_cfg' not in cfg
