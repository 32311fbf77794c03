"""The config layer: how a config file and a command line become a run
(:func:`load_config`), your own dataset from a few top-level names (:mod:`.custom_data`),
and config mistakes found while building, named (:mod:`.build_errors`).

It sits below the engine and the tools and imports nothing of ddetr but
:mod:`ddetr.errors`."""
from .build_errors import config_errors_named, explain_build_error, unregistered_type_error
from .custom_data import apply_custom_data
from .loading import RUN_KEYS, load_config, merge_cfg_options, parse_cfg_options

__all__ = ['load_config', 'merge_cfg_options', 'parse_cfg_options', 'RUN_KEYS',
           'apply_custom_data', 'config_errors_named', 'explain_build_error',
           'unregistered_type_error']
