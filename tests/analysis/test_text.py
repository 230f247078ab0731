"""How values read in the comparison's and the region's tables and the figures' ticks."""
from __future__ import annotations

import math

import numpy as np

from stablesweep.analysis.text import lr_text, num_text, text_order, value_text


def test_lr_and_num_text_show_a_dash_for_what_is_not_a_finite_number():
    assert lr_text(2e-3) == "2.00e-03" and lr_text(np.float64(1e-5)) == "1.00e-05"
    assert num_text(0.123456) == "0.1235" and num_text(3) == "3"
    for bad in (None, math.nan, math.inf, "x"):
        assert lr_text(bad) == "-" and num_text(bad) == "-"
    assert lr_text(None, none="n/a") == "n/a"


def test_value_text_writes_small_and_large_floats_in_e_notation():
    assert value_text(2e-6) == "2.00e-06" and value_text(5e4) == "5.00e+04"
    assert value_text(0.25) == "0.25" and value_text(1.0) == "1.0" and value_text(0.0) == "0.0"
    assert value_text(None) == "none" and value_text(True) == "true" and value_text("bf16") == "bf16"


def test_text_order_puts_none_first_then_numbers_by_value_then_the_rest():
    values = ["slice", "1.0", "none", "0.25", "1e-06", "bf16"]
    assert sorted(values, key=text_order) == ["none", "1e-06", "0.25", "1.0", "bf16", "slice"]
