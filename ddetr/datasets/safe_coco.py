"""mmdet's ``CocoDataset`` with the gaps for bad data filled.

What mmdet's ``CocoDataset.parse_data_info`` already does (and is kept): drop boxes with
``w < 1``, ``h < 1`` or ``area <= 0``, boxes with no overlap with the image, and
``ignore`` annotations -- silently. What this class adds:

- boxes that stick out of the image are clipped to it (mmdet keeps them as they are);
- boxes that are dropped or clipped are counted, and one warning per annotation file
  says how many (a debug line lists the first few images);
- a missing ``area`` is taken as ``w * h`` instead of failing with a ``KeyError``;
- in test mode, an image whose pipeline returned ``None`` (e.g. the file is missing or
  corrupt, see :class:`LoadImageFromFileSafe`) stops the run with an
  :class:`ImageLoadError` naming the file, instead of mmengine's generic message;
- any exception raised by the pipeline gets a note naming the image file.
"""
import logging
import math
from collections import Counter
from typing import List, Optional, Union

from mmdet.datasets import CocoDataset
from mmengine.logging import print_log

from ddetr.registry import DATASETS

from .transforms.loading import ImageLoadError, load_image

_DROP_REASONS = {'invalid': 'non-finite coordinates', 'empty': 'zero width, height or area',
                 'outside': 'outside the image'}


@DATASETS.register_module()
class SafeCocoDataset(CocoDataset):
    """COCO-format detection dataset; same arguments and data contract as mmdet's
    ``CocoDataset`` (``instances[i]['bbox']`` is ``[x1, y1, x2, y2]`` in pixels),
    with boxes guaranteed inside ``[0, width] x [0, height]`` and at least 1 pixel
    wide and high. Use it with ``LoadImageFromFileSafe`` in the pipeline."""

    def load_data_list(self) -> List[dict]:
        self._box_counts: Counter = Counter()
        self._box_examples: List[str] = []
        data_list = super().load_data_list()
        self._report_boxes()
        return data_list

    def parse_data_info(self, raw_data_info: dict) -> Union[dict, List[dict]]:
        img_info = raw_data_info['raw_img_info']
        kept = [ann for ann in (self._sanitize(ann, img_info)
                                for ann in raw_data_info['raw_ann_info']) if ann is not None]
        return super().parse_data_info(dict(raw_data_info, raw_ann_info=kept))

    def _sanitize(self, ann: dict, img_info: dict) -> Optional[dict]:
        """Clip one COCO annotation's ``[x, y, w, h]`` box to the image; ``None`` (and
        a count) when nothing usable is left."""
        if ann.get('ignore', False) or ann.get('category_id') not in self.cat_ids:
            return ann  # mmdet skips these on purpose: not our business
        x, y, w, h = (float(v) for v in ann['bbox'])
        area = float(ann.get('area', w * h))
        width, height = float(img_info['width']), float(img_info['height'])
        if not all(math.isfinite(v) for v in (x, y, w, h, area)):
            return self._drop('invalid', img_info)
        if w < 1 or h < 1 or area <= 0:
            return self._drop('empty', img_info)
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, width), min(y + h, height)
        if x2 - x1 < 1 or y2 - y1 < 1:
            return self._drop('outside', img_info)
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            self._box_counts['clipped'] += 1
            area *= (x2 - x1) * (y2 - y1) / (w * h)
        elif 'area' in ann:
            return ann
        return dict(ann, bbox=[x1, y1, x2 - x1, y2 - y1], area=area)

    def _drop(self, reason: str, img_info: dict) -> None:
        """Count a dropped box (and remember a few examples); returns ``None``."""
        self._box_counts[reason] += 1
        if len(self._box_examples) < 5:
            self._box_examples.append(f"{img_info.get('file_name')} ({_DROP_REASONS[reason]})")
        return None

    def _report_boxes(self) -> None:
        counts = self._box_counts
        dropped = [f'{counts[r]} {text}' for r, text in _DROP_REASONS.items() if counts[r]]
        if not dropped and not counts['clipped']:
            return
        parts = []
        if dropped:
            parts.append('dropped boxes: ' + ', '.join(dropped))
        if counts['clipped']:
            parts.append(f"clipped {counts['clipped']} boxes to the image border")
        print_log(f'{self.ann_file}: ' + '; '.join(parts), logger='current',
                  level=logging.WARNING)
        if self._box_examples:
            print_log(f'{self.ann_file}: first dropped boxes: ' +
                      ', '.join(self._box_examples), logger='current', level=logging.DEBUG)

    def prepare_data(self, idx: int) -> Optional[dict]:
        try:
            data = super().prepare_data(idx)
        except Exception as e:
            if hasattr(e, 'add_note'):  # Python >= 3.11
                e.add_note(f'while preparing image {self._img_path(idx)}')
            raise
        if data is None and self.test_mode:
            path = self._img_path(idx)
            try:  # read it again to tell why
                load_image(path, backend_args=self.backend_args)
            except ImageLoadError as e:
                raise ImageLoadError(f'{e} (test mode stops at unreadable images)') from None
            raise ImageLoadError(f'the test pipeline returned no data for image {path}')
        return data

    def _img_path(self, idx: int) -> str:
        try:
            return self.get_data_info(idx)['img_path']
        except Exception:  # never hide the original error behind this one
            return f'<index {idx}>'
