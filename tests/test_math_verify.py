"""``\\boxed{}`` answers scored by math-verify (the paper scale's reward), one test per form.

What math-verify 0.9.0 says, pinned here so that an upgrade that changes it shows up:
``\\frac{1}{2}``, ``\\dfrac{1}{2}``, ``0.5`` and ``1/2`` are equal; ``1,000`` and ``1{,}000``
equal ``1000``; ``50\\%`` equals neither ``0.5`` nor ``50`` (a percentage stays a string, so the
reference must be written as the paper's answer key writes it); ``{1,2}`` and ``{2,1}`` are the
same set, ``(1,2)`` and ``(2,1)`` different (an open interval vs a tuple); ``2\\sqrt{2}`` equals
``\\sqrt{8}``. A completion without a ``\\boxed{}`` is a format failure even when it states the
answer otherwise; the last box is the answer; a box too costly to evaluate (a power tower) is a
wrong answer at once.
"""

from __future__ import annotations

import threading

import pytest

from methods.posttrain.data import last_boxed
from methods.posttrain.rewards import (
    RewardStats,
    correctness_reward,
    math_verify_reward,
    reward_function,
    verify_boxed,
)


@pytest.mark.parametrize(
    "completion, gold, correct",
    [
        # \frac vs a decimal, both ways
        (r"So the answer is \boxed{\frac{1}{2}}.", "0.5", True),
        (r"\boxed{0.5}", r"\frac{1}{2}", True),
        (r"\boxed{0.4}", r"\frac{1}{2}", False),
        # \dfrac (display fraction) vs a slash fraction
        (r"\boxed{\dfrac{1}{2}}", "1/2", True),
        (r"\boxed{\dfrac{1}{3}}", "1/2", False),
        # integers with thousands separators
        (r"\boxed{1,000}", "1000", True),
        (r"\boxed{1{,}000}", "1000", True),
        (r"\boxed{1,001}", "1000", False),
        # a percentage is not its fraction nor its number (math-verify 0.9.0)
        (r"\boxed{50\%}", "0.5", False),
        (r"\boxed{50\%}", "50", False),
        (r"\boxed{50\%}", r"50\%", True),
        # negative numbers: the sign counts
        (r"\boxed{-3}", "-3", True),
        (r"\boxed{-3}", "3", False),
        (r"\boxed{3}", "-3", False),
        # sets (order-free) and tuples (ordered)
        (r"\boxed{\{1,2\}}", r"\{2,1\}", True),
        (r"\boxed{\{1,3\}}", r"\{2,1\}", False),
        (r"\boxed{(1,2)}", "(1,2)", True),
        (r"\boxed{(1,2)}", "(2,1)", False),
        # \sqrt, simplified or not
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", True),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}", True),
        (r"\boxed{\sqrt{3}}", r"\sqrt{2}", False),
    ],
)
def test_boxed_forms(completion, gold, correct):
    assert verify_boxed(completion, gold) == (correct, False)


@pytest.mark.parametrize(
    "completion",
    [
        "The answer is 5.",  # states the answer, but not in a box
        "5",
        r"\boxed{}",  # an empty box
        r"almost \boxed{5",  # never closed
        "",
    ],
)
def test_no_boxed_answer_is_a_format_failure(completion):
    assert verify_boxed(completion, "5") == (False, True)


def test_last_boxed_wins():
    text = r"First try \boxed{3}. Wait, that is wrong: \boxed{4}."
    assert verify_boxed(text, "4") == (True, False)
    assert verify_boxed(text, "3") == (False, False)
    # math-verify alone would read both boxes as the set {3, 4}: the extraction is ours
    assert last_boxed(text) == "4"


def test_nested_braces():
    text = r"\boxed{\frac{1}{\sqrt{4}}} and \fbox{x}"
    assert last_boxed(r"\boxed{\frac{1}{\sqrt{4}}}") == r"\frac{1}{\sqrt{4}}"
    assert last_boxed(text) == "x"  # \fbox counts as a box
    assert verify_boxed(r"so \boxed{\frac{1}{\sqrt{4}}}.", "0.5") == (True, False)
    assert verify_boxed(r"\boxed{\frac{1}{\sqrt{4}}}", "0.25") == (False, False)
    pair = r"\boxed{\left(\frac{1}{2}, 3\right)}"
    assert verify_boxed(pair, "(1/2, 3)") == (True, False)
    assert verify_boxed(pair, "(3, 1/2)") == (False, False)


def test_boxed_reference_and_gsm8k_style_reference():
    # a reference written as a solution with its own box, or a bare number with commas
    assert verify_boxed(r"\boxed{12}", r"so it is \boxed{12}") == (True, False)
    assert verify_boxed(r"\boxed{1200}", "1,200") == (True, False)


def test_reward_contract_and_stats():
    stats = RewardStats()
    comps = [r"\boxed{\frac{1}{2}}", "answer is 0.5", r"\boxed{7}"]
    rewards, fails = math_verify_reward(comps, ["0.5", "0.5", "8"], stats)
    assert rewards == [1.0, 0.0, 0.0] and fails == [False, True, False]
    assert (stats.n, stats.correct, stats.format_failures, stats.history) == (3, 1, 1, [1])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        math_verify_reward(["a", "b"], ["1"])


def test_reward_function_picks_the_scale_reward():
    assert reward_function("math_verify") is math_verify_reward
    assert reward_function("arith") is correctness_reward
    with pytest.raises(ValueError, match="'boxed'"):
        reward_function("boxed")


def test_works_outside_the_main_thread():
    # math-verify's default timeouts use signal.alarm, which raises outside the main thread
    out: list = []

    def work():
        out.append(math_verify_reward([r"\boxed{\dfrac{1}{2}}", r"\boxed{2}"], ["0.5", "3"]))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out == [([1.0, 0.0], [False, False])]


@pytest.mark.parametrize(
    "box", [r"10^{10^{10^{10}}}", r"10^{12345678}", r"100000!", r"9!!!!!!", r"2^3^4^5"]
)
def test_costly_boxes_are_wrong_answers_at_once_in_any_thread(box):
    # outside the main thread math-verify has no timeout: sympy would hold the GIL for minutes
    out: list = []
    t = threading.Thread(target=lambda: out.append(verify_boxed(rf"\boxed{{{box}}}", "1")))
    t.start()
    t.join(20)
    assert not t.is_alive() and out == [(False, False)]


def test_ordinary_powers_and_factorials_are_still_verified():
    assert verify_boxed(r"\boxed{2^{1000}}", "2^{1000}") == (True, False)
    assert verify_boxed(r"\boxed{5!}", "120") == (True, False)
    assert verify_boxed(r"\boxed{e^{x^2}}", "e^{x^{2}}") == (True, False)
