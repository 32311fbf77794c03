"""mmengine's Runner with ddetr's rules for ``load_from`` (see
:mod:`ddetr.engine.state_dict`): training fine-tunes (every parameter whose name and shape
match is loaded, only the classification layers may be re-initialized, one log block says
which), testing and validation load every parameter or stop. ``--resume`` is mmengine's."""
import contextlib
import copy

import torch
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint

from ddetr.config import config_errors_named
from ddetr.errors import CheckpointError, ConfigError, DataError

from .checkpoint import is_safetensors, use_safe_checkpoint_loader
from .cpu_memory import keep_freed_memory
from .state_dict import load_for_finetuning, load_for_testing, state_dict_of


def setup_cpu_distributed(cfg) -> None:
    """Distributed runs without GPUs: processes talk over gloo and DDP gets no device ids.
    mmengine's own init_dist always selects a CUDA device, so the process group is set up
    here (from torchrun's environment) before the Runner, which then reuses it."""
    import torch.distributed as dist
    if cfg.launcher != 'pytorch':
        raise ConfigError(f'--launcher {cfg.launcher} without GPUs: use pytorch '
                          f'(tools/dist_train.sh, tools/dist_test.sh)')
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')
    cfg.model_wrapper_cfg = dict(
        type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))


class DdetrRunner(Runner):
    """The Runner of ``tools/train.py`` and ``tools/test.py``. It reads local checkpoints
    with ddetr's safe loader (:mod:`ddetr.engine.checkpoint`), runs distributed jobs
    without GPUs over gloo, and without a GPU makes malloc keep freed memory for reuse
    (:mod:`ddetr.engine.cpu_memory`).

    What it builds from the config (at construction, and lazily in ``train``/``test``:
    optimizer, schedulers, dataloaders, evaluators) reports a misspelt or missing key, or a
    ``type`` no registry has, as :class:`ddetr.errors.ConfigError` naming it (and the
    nearest valid name) instead of a traceback through mmengine's builders; a file the
    config names that does not exist (an annotation file) as :class:`DataError`."""

    _finetune = False  # set by train(): load_from is a starting point, not the model

    @classmethod
    def from_cfg(cls, cfg) -> 'DdetrRunner':
        if cfg.get('launcher', 'none') != 'none' and not torch.cuda.is_available():
            cfg = copy.deepcopy(cfg)
            setup_cpu_distributed(cfg)
        return super().from_cfg(cfg)

    def __init__(self, *args, **kwargs):
        use_safe_checkpoint_loader()
        memory = None if torch.cuda.is_available() else keep_freed_memory()
        with config_errors_named():
            super().__init__(*args, **kwargs)
        if memory:
            self.logger.info(memory)

    @contextlib.contextmanager
    def _mistakes_named(self):
        config = getattr(self.cfg, 'filename', None) or 'the config'
        with config_errors_named():
            try:
                yield
            except FileNotFoundError as err:  # e.g. an annotation file under data_root
                raise DataError(f'{err} (check the paths in {config})') from None

    def train(self):
        self._finetune = True
        with self._mistakes_named():
            return super().train()

    def test(self):
        with self._mistakes_named():
            return super().test()

    def register_default_hooks(self, hooks=None) -> None:
        """mmengine's, where ``None`` also switches off a hook ddetr's runtime config adds
        (``default_hooks.preflight=None``), not only mmengine's own."""
        if hooks is not None:
            hooks = {name: hook for name, hook in hooks.items()
                     if hook is not None or name in self._MMENGINE_DEFAULT_HOOKS}
        super().register_default_hooks(hooks)

    _MMENGINE_DEFAULT_HOOKS = ('runtime_info', 'timer', 'sampler_seed', 'logger',
                               'param_scheduler', 'checkpoint')

    def resume(self, filename: str, *args, **kwargs) -> None:
        """mmengine's, with what cannot resume reported as :class:`CheckpointError` saying
        what to do: a file of weights only (safetensors, a published checkpoint) and an
        optimizer state whose parameter groups do not match this config's optimizer."""
        weights_only = (f'{filename} holds weights only: --resume needs a checkpoint '
                        f'tools/train.py wrote (optimizer, iteration, message hub); to start '
                        f'from these weights use --cfg-options load_from={filename}')
        if is_safetensors(filename):
            raise CheckpointError(weights_only)
        try:
            super().resume(filename, *args, **kwargs)
        except KeyError as err:
            if err.args and err.args[0] in ('message_hub', 'optimizer', 'meta'):
                raise CheckpointError(weights_only) from None
            raise
        except ValueError as err:
            if 'parameter group' not in str(err):
                raise
            raise CheckpointError(
                f'{filename}: its optimizer state does not fit this config\'s optimizer '
                f'({err}). ddetr groups the parameters that share settings since '
                f'2026-12-03 (GroupedOptimWrapperConstructor); checkpoints saved before '
                f'have one group per parameter. Resume it with the ddetr version that saved '
                f'it, or start from its weights: --cfg-options load_from={filename}') from err

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys=None):
        """Load ``filename`` into the model: for fine-tuning when training, strictly
        otherwise (``strict`` and ``revise_keys`` of mmengine's signature are replaced by
        these rules; a ``module.`` prefix is removed). Raises
        :class:`ddetr.errors.CheckpointError` naming what does not fit."""
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        if isinstance(model, BaseTTAModel):  # test-time augmentation wraps the detector
            model = model.module
        state_dict = state_dict_of(checkpoint, filename)
        config = getattr(self.cfg, 'filename', None)
        if self._finetune:
            self.logger.info(load_for_finetuning(model, state_dict, filename, config))
        else:
            load_for_testing(model, state_dict, filename, config)
            self.logger.info(f'Loaded checkpoint {filename}')
        self._has_loaded = True
        return checkpoint
