"""tuner.display: what the terminal shows of results."""

import math

from tuner import display


def test_console_table_renders_dicts_as_plain_text() -> None:
    rows = [
        {"trial": 3, "return": 487.123456789, "lr": 0.000312},
        {"trial": 7, "note": "[bold]kept[/bold]"},
    ]
    text = display.console_table(rows, title="best trials")
    assert "best trials" in text
    for expected in ("trial", "return", "lr", "note", "487.1", "0.000312", "[bold]kept[/bold]"):
        assert expected in text
    assert "487.12" not in text  # four significant digits on the console
    assert "\x1b" not in text  # no colour codes
    assert max(len(line) for line in text.splitlines()) <= display.DEFAULT_WIDTH


def test_a_table_too_wide_leaves_out_droppable_columns_in_their_order_and_says_so() -> None:
    rows = [
        {"config": name, "iqm": 123.456, "ci_low": -1.25, "ci_high": 211.33, "mean": 110.66, "std": 96.93}
        for name in ("default", "tuned", "difference")
    ]
    wide = display.console_table(rows, "validation", width=200, droppable=("std", "mean"))
    assert "std" in wide and "mean" in wide and "not shown" not in wide

    # Drawn whole the table is 57 characters wide, 49 without std, 41 without std and mean.
    narrow = display.console_table(rows, "validation", width=49, droppable=("std", "mean"), full_in="v.md")
    lines = narrow.splitlines()
    assert max(len(line) for line in lines) <= 49
    header = next(line for line in lines if "config" in line)
    assert "std" not in header and "mean" in header  # std went first, and was enough
    assert "not shown at 49 columns: std (see v.md)" in " ".join(narrow.split())

    narrower = display.console_table(rows, "validation", width=48, droppable=("std", "mean"))
    lines = narrower.splitlines()
    assert max(len(line) for line in lines) <= 48
    header = next(line for line in lines if "config" in line)
    assert "std" not in header and "mean" not in header and "ci_high" in header
    assert "not shown at 48 columns: std, mean" in " ".join(narrower.split())


def test_values_are_rounded_for_display_only() -> None:
    assert display.display_value(1.2743150710000464) == "1.274"
    assert display.display_value(-143.29999999999998) == "-143.3"
    assert display.display_value(0.000312456) == "0.0003125"
    assert display.display_value(12345.67) == "12346"  # whole, not 1.235e+04
    assert display.display_value(128) == "128" and display.display_value(True) == "True"
    assert display.display_value(math.nan) == "" and display.display_value(None) == ""


def test_values_are_described_to_four_significant_digits() -> None:
    values = {"n_steps": 128, "gamma": 0.99834567, "learning_rate": 0.000312456789, "net_arch": [64, 64]}
    assert display.describe_values(values) == (
        "n_steps=128, gamma=0.9983, learning_rate=0.0003125, net_arch=[64, 64]"
    )
