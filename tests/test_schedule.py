"""The schedule grammar and its resizing, exactly (config/schedule.py)."""

from __future__ import annotations

import pytest

from cdi_beamline.config.schedule import ER, HIO, RAAR, Schedule, Step, parse_schedule
from cdi_beamline.errors import CDIValueError


def test_resized_keeps_the_structure_and_the_total():
    s = parse_schedule("(HIO**130 * ER**20)**4")
    assert str(s.resized(300)) == "(HIO**65 * ER**10)**4"
    assert str(s.resized(600)) == str(s)
    # rounding leftovers: run-length encoded, the last algorithm extended to the total
    t = parse_schedule("HIO(0.7)**3 * RAAR**3 * ER**3")
    r = t.resized(10)
    assert len(r) == 10 and str(r) == "HIO(0.7)**3 * RAAR**3 * ER**4"
    r = t.resized(8)  # 8/9 of 3 rounds to 3: 9 iterations, trimmed to 8
    assert str(r) == "HIO(0.7)**3 * RAAR**3 * ER**2"
    assert list(r)[:4] == [("HIO", 0.7)] * 3 + [("RAAR", None)]
    # every step keeps at least one iteration, then the total is trimmed
    assert str(t.resized(2)) == "HIO(0.7) * RAAR"
    assert str(t.resized(1)) == "HIO(0.7)"
    assert str(parse_schedule("ER**4 * HIO(0.5)**2").resized(3)) == "ER**2 * HIO(0.5)"
    with pytest.raises(CDIValueError, match="iterations must be >= 1, got 0"):
        t.resized(0)


def test_nested_blocks_scale_inside():
    s = parse_schedule("((HIO**4 * ER**2)**2 * RAAR(0.8)**4)**2")
    assert len(s) == 32
    assert str(s.resized(16)) == "((HIO**2 * ER)**2 * RAAR(0.8)**2)**2"
    assert parse_schedule(str(s)) == s


def test_algebra_and_printing():
    assert str(ER**3 * HIO(0.7) ** 2) == "ER**3 * HIO(0.7)**2"
    assert str((ER * HIO) ** 2) == "(ER * HIO)**2"
    assert str((HIO**2) ** 3) == "HIO**6"  # (X**a)**n == X**(a*n)
    assert str(RAAR(0.25)) == "RAAR(0.25)" and str(ER) == "ER"
    assert repr(HIO**2) == "Schedule('HIO**2')"
    assert list(HIO(0.6) ** 2 * ER) == [("HIO", 0.6), ("HIO", 0.6), ("ER", None)]
    assert Step("HIO", 0.5, 3) == Step("HIO", 0.5, 3) and len(Step("ER", None, 4)) == 4
    assert parse_schedule(" hio ** 2 * er ") == HIO**2 * ER  # names are case-insensitive
    assert parse_schedule("HIO(1)") == HIO(1.0) and parse_schedule("HIO(.5e0)".replace(".", "0.")) == HIO(0.5)
    assert parse_schedule(ER**2) == ER**2  # a Schedule passes through
    with pytest.raises(TypeError):
        ER * 2  # noqa: B018


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ER**0, "positive integer, got 0"),
        (lambda: ER**True, "positive integer, got True"),
        (lambda: (ER * HIO)(0.5), r"^only a single algorithm takes a beta, e.g. HIO\(0.7\)$"),
        (lambda: Schedule((Step("HIO"),), 2)(0.5), "^only a single algorithm takes a beta"),
        (lambda: (HIO**2)(0.5), None),
        (lambda: (ER * HIO) ** 2 * ER**0, "positive integer"),
        (lambda: ER(0.5), "^ER takes no beta$"),
        (lambda: parse_schedule("ER**"), r"^schedule 'ER\*\*': expected a repeat count at the end$"),
        (lambda: parse_schedule("HIO("), r"^schedule 'HIO\(': expected a beta value at the end$"),
        (lambda: parse_schedule("HIO(0.5"), r"^schedule 'HIO\(0.5': expected '\)' at the end$"),
        (lambda: parse_schedule(""), r"schedule '': expected an algorithm \(ER, HIO, RAAR\) or '\(' at the end"),
        (lambda: parse_schedule("   "), "expected an algorithm .* at the end"),
        (lambda: parse_schedule("ER ** 0"), "repeat count must be a positive integer, got '0'"),
        (lambda: parse_schedule("ER % 2"), "unexpected character '%' at 2"),
        (lambda: parse_schedule("ER * "), "expected an algorithm .* at the end"),
        (lambda: parse_schedule("ER HIO"), "expected end of schedule at 3, got 'HIO'"),
        (lambda: parse_schedule("HIO(0)"), r"beta of HIO must be in \(0, 1\], got 0"),
        (lambda: parse_schedule("XYZ"), "unknown algorithm 'XYZ'; use one of ER, HIO, RAAR"),
        (lambda: parse_schedule("(ER"), r"expected '\)' at the end"),
    ],
)
def test_refusals_say_why(call, message):
    if message is None:  # HIO**2 carries a beta: the same single algorithm, repeated
        assert str(call()) == "HIO(0.5)**2"
        return
    with pytest.raises(CDIValueError, match=message):
        call()


def test_one_is_a_repeat_count_and_nested_blocks_print_with_parentheses():
    assert ER**1 == ER and parse_schedule("ER**1") == ER and str(parse_schedule("HIO**1")) == "HIO"
    nested = Schedule(((ER * HIO) ** 2,))  # a single block that is itself repeated
    assert str(nested**3) == "(ER * HIO)**6" and len(nested**3) == 12
    assert str(Schedule((Schedule((Step("ER"), Step("HIO"))), Step("RAAR")))) == "(ER * HIO) * RAAR"


def test_schedule_is_immutable_and_hashable():
    s = HIO**2 * ER
    assert hash(s) == hash(parse_schedule("HIO**2 * ER"))
    with pytest.raises(AttributeError):
        s.count = 3  # type: ignore[misc]
    assert Schedule() == Schedule((), 1) and len(Schedule()) == 0
