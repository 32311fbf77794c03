"""Small helpers shared by ddetr's tools and tests."""
from mmengine.registry import init_default_scope


def register_all_modules(init_scope: bool = True) -> None:
    """Import every module that registers something (ddetr's and mmdet's), and make
    ``ddetr`` the default registry scope, as mmdet's ``register_all_modules`` does."""
    import mmdet.datasets  # noqa: F401
    import mmdet.engine  # noqa: F401
    import mmdet.evaluation  # noqa: F401
    import mmdet.models  # noqa: F401
    import mmdet.visualization  # noqa: F401

    import ddetr.datasets  # noqa: F401
    import ddetr.engine  # noqa: F401
    import ddetr.models  # noqa: F401
    if init_scope:
        init_default_scope('ddetr')


def parse_cfg_options(options):
    """``--cfg-options`` KEY=VALUE strings -> dict for ``Config.merge_from_dict``, with
    mmengine's value parsing (numbers, lists, tuples, True/False/None)."""
    from mmengine.config import DictAction
    parsed = {}
    for option in options:
        if '=' not in option:
            raise ValueError(f'--cfg-options: "{option}" is not KEY=VALUE')
        key, value = option.split('=', maxsplit=1)
        parsed[key] = DictAction._parse_iterable(value)
    return parsed
