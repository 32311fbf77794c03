"""Fixtures shared across the test tree."""
import contextlib
import io
import os

import pytest
import torch


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
