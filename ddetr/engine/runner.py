"""mmengine's Runner with ddetr's rules for ``load_from`` (see
:mod:`ddetr.engine.state_dict`): training fine-tunes (every parameter whose name and shape
match is loaded, only the classification layers may be re-initialized, one log block says
which), testing and validation load every parameter or stop. ``--resume`` is mmengine's."""
import torch
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint

from .cpu_memory import keep_freed_memory
from .state_dict import CheckpointError, load_for_finetuning, load_for_testing, state_dict_of


class DdetrRunner(Runner):
    """The Runner of ``tools/train.py`` and ``tools/test.py``. Without a GPU it also makes
    malloc keep freed memory for reuse (:mod:`ddetr.engine.cpu_memory`).

    What it builds from the config (at construction, and lazily in ``train``/``test``:
    optimizer, schedulers, dataloaders, evaluators) reports a misspelt or missing key, or a
    ``type`` no registry has, as :class:`ddetr.utils.ConfigError` naming it (and the
    nearest valid name) instead of a traceback through mmengine's builders."""

    _finetune = False  # set by train(): load_from is a starting point, not the model

    def __init__(self, *args, **kwargs):
        from ddetr.utils import config_errors_named
        memory = None if torch.cuda.is_available() else keep_freed_memory()
        with config_errors_named():
            super().__init__(*args, **kwargs)
        if memory:
            self.logger.info(memory)

    def train(self):
        from ddetr.utils import config_errors_named
        self._finetune = True
        with config_errors_named():
            return super().train()

    def test(self):
        from ddetr.utils import config_errors_named
        with config_errors_named():
            return super().test()

    def resume(self, filename: str, *args, **kwargs) -> None:
        """mmengine's, with an optimizer state whose parameter groups do not match this
        config's optimizer reported as :class:`CheckpointError` saying what to do."""
        try:
            super().resume(filename, *args, **kwargs)
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
        :class:`ddetr.engine.state_dict.CheckpointError` naming what does not fit."""
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
