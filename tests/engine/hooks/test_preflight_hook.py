"""PreflightHook's category check on its own (the end-to-end checks are in
tests/tools/test_custom_data.py)."""
import json

import pytest

from ddetr.engine.hooks.preflight_hook import PreflightError, check_categories


def write(tmp_path, categories, used):
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(dict(
        images=[dict(id=1, file_name='a.png', height=10, width=10)],
        annotations=[dict(id=i + 1, image_id=1, category_id=c, bbox=[0, 0, 2, 2])
                     for i, c in enumerate(used)],
        categories=[dict(id=i, name=n) for i, n in categories])))
    return str(path)


def test_matching_names_in_any_order_pass(tmp_path):
    ann = write(tmp_path, [(1, 'boat'), (2, 'plane')], used=[1, 2])
    check_categories(ann, ('plane', 'boat'), 'train_dataloader.dataset')


def test_unknown_and_missing_names_are_listed(tmp_path):
    ann = write(tmp_path, [(1, 'boat'), (2, 'plane'), (3, 'car')], used=[1, 2, 3])
    with pytest.raises(PreflightError) as info:
        check_categories(ann, ('boat', 'ship'), 'val_dataloader.dataset')
    message = str(info.value)
    assert message.startswith('val_dataloader.dataset:')
    assert "class names ['ship'] are not categories" in message
    assert "categories ['car', 'plane'] have boxes but are not in the class names" in message


def test_declared_but_unused_category_may_be_left_out(tmp_path):
    ann = write(tmp_path, [(1, 'boat'), (2, 'plane')], used=[1])
    check_categories(ann, ('boat',), 'train_dataloader.dataset')
