"""Progress bars are tqdm's: a widget in a Jupyter kernel, the course's text line elsewhere."""

from __future__ import annotations

import pytest

from labkit._progress import Progress, _is_widget
from labkit.measure import sweep
from labkit.pool import WorkerPool


def test_outside_jupyter_the_bar_is_a_text_line_on_stderr(capsys):
    bar = Progress(4, "map")
    for _ in range(4):
        bar.advance()
    bar.close()
    err = capsys.readouterr().err
    assert "map [" in err and "4/4" in err and "#" * 30 in err
    assert not bar.widget


def test_a_stopped_bar_says_so_and_closing_twice_draws_nothing_more(capsys):
    bar = Progress(10, "map")
    bar.advance(3)
    bar.close(ok=False)
    bar.close()
    bar.advance()  # a late callback after the close is ignored
    err = capsys.readouterr().err
    assert "3/10, stopped" in err and err.count("stopped") == 1
    assert bar.done == 3


def test_the_notebook_drawing_of_tqdm_is_recognised_as_a_widget():
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_tqdm
    from tqdm.std import tqdm as text_tqdm

    assert _is_widget(notebook_tqdm) and not _is_widget(text_tqdm)


def test_map_counts_every_item_even_in_chunks(capsys):
    with WorkerPool("thread", workers=2) as pool:
        assert list(pool.map(abs, range(-7, 0), chunksize=3, progress=True)) == [7, 6, 5, 4, 3, 2, 1]
    assert "7/7" in capsys.readouterr().err


def test_a_sweep_with_progress_counts_its_points_on_stderr(capsys):
    result = sweep(abs, (-1,), tasks=2, workers=[1, 2], kind="thread", repeats=1, progress=True)
    assert [p.workers for p in result.points] == [1, 2]
    err = capsys.readouterr().err
    assert "sweep [" in err and "2/2" in err
