"""What the command lines of ddetr's tools share: the entry-point wrapper that turns a
user's mistake into one line, and the arguments every tool spells the same way."""
import argparse
import functools
import inspect
import os
import os.path as osp
import sys
from typing import Callable, Optional, Sequence

from ddetr.errors import DdetrError

__all__ = ['entry_point', 'add_cfg_options', 'add_trust_checkpoint', 'apply_trust_checkpoint']


def entry_point(main: Optional[Callable] = None, *, status: int = 1):
    """Decorate a tool's ``main(argv=None)``: a :class:`ddetr.errors.DdetrError` escaping
    it exits the process with ``<tool>.py: error: <message>`` on stderr and ``status``
    (1; ``@entry_point(status=2)`` for a tool that documents another), no traceback
    (``error (before training): ...`` for a mistake found by the pre-flight checks). Any
    other exception is a bug and keeps its traceback."""
    if main is None:
        return functools.partial(entry_point, status=status)
    prog = osp.basename(inspect.getfile(main))

    @functools.wraps(main)
    def run(argv: Optional[Sequence[str]] = None):
        try:
            return main(argv)
        except DdetrError as err:
            stage = f' ({err.stage})' if err.stage else ''
            print(f'{prog}: error{stage}: {err}', file=sys.stderr)
            sys.exit(status)

    return run


def add_cfg_options(parser: argparse.ArgumentParser,
                    example: str = 'model.num_queries=100') -> None:
    """``--cfg-options KEY=VALUE ...``, read by :func:`ddetr.config.load_config`."""
    parser.add_argument('--cfg-options', nargs='+', metavar='KEY=VALUE', default=None,
                        help=f'override config keys, e.g. {example}; a top-level name the '
                        'config only used while it was read is refused, data_root moves '
                        'every split')


def add_trust_checkpoint(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint`` of the tools that load checkpoints (see
    :mod:`ddetr.engine.checkpoint`)."""
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle any Python object a checkpoint holds, not only '
                        'tensors and mmengine\'s own types (a pickle can run code: only for '
                        'files you trust; same as DDETR_TRUST_CHECKPOINTS=1)')


def apply_trust_checkpoint(args: argparse.Namespace) -> None:
    """``--trust-checkpoint`` given: let this process unpickle checkpoints fully."""
    if getattr(args, 'trust_checkpoint', False):
        from ddetr.engine.checkpoint import TRUST_ENV
        os.environ[TRUST_ENV] = '1'
