"""The live progress line fits the terminal it is drawn on.

What gives way, in what order, and where the width comes from.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import termios

from hypothesis import given
from hypothesis import strategies as st

from ferry.progress import ERASE_TO_END, ProgressDisplay, bar_line, terminal_columns

AMOUNT, SPEED, ETA = "512.0 KiB/1.0 MiB", "3.4 MiB/s", "ETA 1s"
LONG = "a-rather-long-file-name-for-a-narrow-terminal.bin"


@given(
    label=st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=120),
    fraction=st.one_of(st.none(), st.floats(-1, 2)),
    fields=st.lists(
        st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), min_size=1, max_size=30), max_size=4
    ),
    columns=st.integers(2, 300),
)
def test_the_line_never_reaches_the_last_column(label, fraction, fields, columns):
    assert len(bar_line(label, fraction, fields, columns)) <= columns - 1


def test_a_wide_terminal_shows_everything_with_a_30_cell_bar():
    assert (
        bar_line("clip.bin", 0.5, [AMOUNT, SPEED, ETA], 120)
        == f"clip.bin [{'#' * 15}{'-' * 15}] {AMOUNT} {SPEED} {ETA}"
    )


def test_the_bar_shrinks_first_then_fields_drop_from_the_last():
    assert bar_line("clip.bin", 0.5, [AMOUNT, SPEED, ETA], 60) == f"clip.bin [######-------] {AMOUNT} {SPEED} {ETA}"
    assert bar_line("clip.bin", 0.5, [AMOUNT, SPEED, ETA], 50) == f"clip.bin [#####-----] {AMOUNT} {SPEED}"
    assert bar_line("clip.bin", 0.5, [AMOUNT, SPEED, ETA], 40) == f"clip.bin [#####-----] {AMOUNT}"


def test_then_the_label_is_cut_and_the_first_field_kept():
    assert bar_line(LONG, 0.5, [AMOUNT, SPEED, ETA], 50) == f"a-rather-long-fil… [#####-----] {AMOUNT}"


def test_at_last_the_bar_and_then_the_label_go():
    assert bar_line(LONG, 0.5, [AMOUNT], 30) == f"a-rather-l… {AMOUNT}"
    assert bar_line(LONG, 0.5, [AMOUNT], 20) == AMOUNT


def test_an_unknown_total_is_a_bar_of_question_marks():
    assert bar_line("download", None, ["1.0 MiB"], 80) == f"download [{'?' * 30}] 1.0 MiB"


def test_columns_comes_from_the_terminal_the_stream_writes_to(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    controller, terminal = pty.openpty()
    try:
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 50, 0, 0))  # rows, columns, pixels
        with open(terminal, "w", closefd=False) as stream:
            assert terminal_columns(stream) == 50
    finally:
        os.close(controller)
        os.close(terminal)


def test_columns_variable_wins_and_a_pipe_counts_as_80(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert terminal_columns(io.StringIO()) == 80
    monkeypatch.setenv("COLUMNS", "50")
    assert terminal_columns(io.StringIO()) == 50


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_each_redraw_returns_to_the_line_start_and_erases_what_a_longer_line_left(monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    screen = Terminal()
    display = ProgressDisplay(LONG, screen)

    display.update(512 << 10, 1 << 20, 3.4 * (1 << 20))
    display.update(1 << 20, 1 << 20, 3.4 * (1 << 20))
    display.finish()

    redraws = screen.getvalue().removesuffix("\n").split("\r")[1:]
    assert len(redraws) == 2 and all(r.endswith(ERASE_TO_END) and len(r) - len(ERASE_TO_END) < 50 for r in redraws)


def test_finishing_without_a_bar_writes_nothing():
    screen = Terminal()
    ProgressDisplay("clip.bin", screen).finish()
    assert screen.getvalue() == ""
