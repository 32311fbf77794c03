"""Fixtures shared across the test tree."""
import contextlib
import io
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
QUICKSTART = osp.join(ROOT, 'configs', 'quickstart', 'ddetr_tiny_synthetic.py')


class MakesADirectory:
    """Unpickling this calls os.makedirs(path): the stand-in for a crafted checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


@pytest.fixture
def crafted_checkpoint(tmp_path, monkeypatch):
    """(path, marker): a checkpoint whose pickle creates ``marker`` when fully unpickled;
    the user has not opted in to trusting checkpoints."""
    monkeypatch.delenv('DDETR_TRUST_CHECKPOINTS', raising=False)
    marker = tmp_path / 'pwned'
    path = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'meta': MakesADirectory(str(marker))}, path)
    return str(path), marker


@pytest.fixture
def one_thread():
    """torch on one thread for the test (reproducible sums, no oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stops_in_one_line(main, argv, status: int = 1) -> str:
    """Call a tool's ``main(argv)`` (decorated with :func:`ddetr.cli.entry_point`) with a
    user's mistake: it must exit with ``status`` and one ``<tool>.py: error: ...`` message
    on stderr, which is returned."""
    stderr = io.StringIO()
    with pytest.raises(SystemExit) as exited, contextlib.redirect_stderr(stderr):
        main(argv)
    assert exited.value.code == status, stderr.getvalue()
    message = stderr.getvalue().strip()
    assert ': error' in message.splitlines()[-1] or ': error' in message.splitlines()[0], message
    assert 'Traceback' not in message
    return message


@pytest.fixture
def one_line_exit():
    """:func:`stops_in_one_line`, for tests that call a tool's ``main`` in-process."""
    return stops_in_one_line


@pytest.fixture(scope='session')
def tiny_config(tmp_path_factory):
    """The quick-start model (two-stage + refinement) with 1 + 1 layers and 10 queries."""
    path = tmp_path_factory.mktemp('cfg') / 'tiny.py'
    path.write_text(f"""
_base_ = {QUICKSTART!r}
model = dict(num_queries=10, encoder=dict(num_layers=1), decoder=dict(num_layers=1))
""")
    return str(path)


def write_test_image(path, height=96, width=128, seed=0) -> str:
    """A random image with a red square, written to ``path``; returns the path."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    cv2.rectangle(img, (20, 30), (70, 80), (0, 0, 255), -1)
    cv2.imwrite(str(path), img)
    return str(path)


@pytest.fixture
def image_writer():
    """:func:`write_test_image`."""
    return write_test_image


@pytest.fixture(scope='session')
def image(tmp_path_factory):
    """One 96 x 128 test image file."""
    return write_test_image(tmp_path_factory.mktemp('img') / 'shapes.jpg')
