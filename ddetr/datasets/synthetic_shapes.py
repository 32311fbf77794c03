"""The synthetic shapes task as a dataset: COCO files read by mmdet's ``CocoDataset``
machinery, generated on first use so that a config alone gets a user from nothing to
training."""
from typing import Optional

from ddetr.errors import ConfigError
from ddetr.registry import DATASETS

from .safe_coco import SafeCocoDataset
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, ensure_synthetic_coco


@DATASETS.register_module()
class SyntheticShapesDataset(SafeCocoDataset):
    """:class:`SafeCocoDataset` with the shape classes as metainfo.

    Args:
        synthetic (dict, optional): when given, the keyword arguments of
            :func:`ensure_synthetic_coco` (``num_train``, ``num_val``, ``seed``, ...):
            the dataset is generated under ``data_root`` before it is read, unless it
            is already there with the same parameters. Give the train and val datasets
            the same dict: each call makes both splits.
        data_root (str): the dataset folder (required with ``synthetic``).
        Other arguments are those of mmdet's ``CocoDataset``.
    """

    METAINFO = dict(classes=SYNTHETIC_CLASSES, palette=SYNTHETIC_PALETTE)

    def __init__(self, *args, data_root: str = '', synthetic: Optional[dict] = None,
                 **kwargs) -> None:
        if synthetic is not None:
            if not data_root:
                raise ConfigError('SyntheticShapesDataset(synthetic=...) needs data_root: '
                                  'the folder to generate the dataset in')
            ensure_synthetic_coco(data_root, **synthetic)
        super().__init__(*args, data_root=data_root, **kwargs)
