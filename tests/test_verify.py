"""The verdict machinery itself: the logit comparison on hand-computed cases, and checks that
never pass what did not run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from yarnconv.verify.check import Bound, judge, skipped
from yarnconv.verify.demo import demo_ok
from yarnconv.verify.logits import LOGIT_BOUNDS, compare_logits
from yarnconv.verify.rotary import ROTARY_BOUNDS


def test_compare_logits_on_hand_computed_cases() -> None:
    same = compare_logits(np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0]]))
    assert same.kl_max == 0 and same.top1_agreement == 1
    # p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2
    c = compare_logits(np.array([[0.0, 0.0]]), np.array([[math.log(3), 0.0]]))
    assert c.kl_max == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2), rel=1e-12)
    assert c.top1_agreement == 1  # a tie in the reference: either pick agrees
    flipped = compare_logits(np.array([[0.0, 5.0], [5.0, 0.0]]), np.array([[0.0, 5.0], [0.0, 5.0]]))
    assert flipped.top1_agreement == 0.5 and flipped.kl[0] == 0 and flipped.kl[1] > 4
    assert compare_logits(np.array([[0.0, 1.0]]), np.array([[10.0, 11.0]])).kl_max == pytest.approx(0, abs=1e-12)  # shift-invariant
    with pytest.raises(ValueError, match="shapes differ"):
        compare_logits(np.zeros((2, 3)), np.zeros((3, 3)))


def test_checks_pass_only_within_their_bounds_and_never_when_skipped() -> None:
    rope_ok = {"lengths_match": True, "max_rel_diff_float32": 0.0, "attention_factor_diff": 0.0}
    logits_ok = {"kl_max": 1e-6, "top1_agreement": 1.0}
    assert judge("rope", rope_ok, ROTARY_BOUNDS).passed and judge("logits", logits_ok, LOGIT_BOUNDS).passed
    assert not judge("rope", {**rope_ok, "max_rel_diff_float32": 1e-3}, ROTARY_BOUNDS).passed
    assert not judge("rope", {**rope_ok, "lengths_match": False}, ROTARY_BOUNDS).passed
    bad = judge("logits", {"kl_max": 0.5, "top1_agreement": 1.0}, LOGIT_BOUNDS)
    assert bad.status == "failed" and "kl_max <= 0.0001" in bad.reason
    assert not judge("logits", {}, LOGIT_BOUNDS).passed  # nothing measured is not a pass
    missing = skipped("logits", "llama-cpp-python is not installed", LOGIT_BOUNDS)
    assert not demo_ok([judge("rope", rope_ok, ROTARY_BOUNDS), missing])
    assert demo_ok([judge("rope", rope_ok, ROTARY_BOUNDS), judge("logits", logits_ok, LOGIT_BOUNDS)])
    assert not demo_ok([])
    assert str(Bound("top1_agreement", ">=", 0.999)) == "top1_agreement >= 0.999"
