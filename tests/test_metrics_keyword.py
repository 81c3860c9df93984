import pytest

from spard.evaluation.judges import Verdict, agreement, attack_success_rate
from spard.evaluation.metrics import accuracy, contains, exact_match, gsm8k_answer, openbookqa_choice


def test_asr_and_agreement_leave_failures_out():
    verdicts = [Verdict(True), Verdict(False), Verdict(None, error="timeout"), Verdict(True)]
    assert attack_success_rate(verdicts) == {"asr": 2 / 3, "harmful": 2, "judged": 3, "failed": 1}
    other = [Verdict(True), Verdict(True), Verdict(False), Verdict(None, error="x")]
    assert agreement(verdicts, other) == 0.5
    assert attack_success_rate([]) ["asr"] is None


@pytest.mark.parametrize(
    "text, number",
    [
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("She earns $1,234.50 in total.\n#### $1,234.50", "1234.5"),
        ("The answer is 18 dollars.", "18"),
        ("So he has 5 apples, then 7, and finally 12 apples left", "12"),
        ("It costs 3.0 dollars", "3"),
        ("#### -4", "-4"),
        ("The total is 1,000,000.", "1000000"),
        ("I don't know.", None),
        ("#### 15 cookies", "15"),
        ("First 10, then the answer: 70%.", "70"),
    ],
)
def test_gsm8k_answer_extraction(text, number):
    assert gsm8k_answer(text) == number


def test_gsm8k_accuracy_against_references():
    refs = ["blah\n#### 72", "x\n#### 1,200", "y\n#### 5"]
    responses = ["so 72 in total", "The answer is $1200.00", "#### 6"]
    assert accuracy("gsm8k", responses, refs) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "text, choice",
    [
        ("fact: plants need light.\n\nthe correct answer is answer2", "answer2"),
        ("Answer 3", "answer3"),
        ("Answer1: a. Answer2: b. The correct one is answer4.", "answer4"),
        ("I think it's 1.", "answer1"),
        ("none of them", None),
    ],
)
def test_openbookqa_choice(text, choice):
    assert openbookqa_choice(text) == choice


def test_exact_and_contains():
    assert exact_match("  Paris. ", "paris") and not exact_match("Paris, France", "Paris")
    assert contains("It is Paris, France.", "paris, france")
    with pytest.raises(ValueError, match="unknown task"):
        accuracy("nope", ["a"], ["a"])
