"""Registering ddetr's modules (and MMDetection's, which configs also name)."""
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
    import ddetr.evaluation  # noqa: F401
    import ddetr.models  # noqa: F401
    if init_scope:
        init_default_scope('ddetr')
