"""Composable algorithm schedules, printed as they read.

``ER**20 * HIO**180`` means 20 iterations of error reduction *then* 180 of hybrid
input-output: products read left to right in time order (unlike PyNX, whose operator
products apply right to left). ``(A * B)**3`` repeats a block; ``HIO(0.7)`` carries its
own beta. ``str(schedule)`` prints the canonical form and ``parse_schedule`` reads it
back: ``parse_schedule(str(s)) == s``.

This module imports only :mod:`cdi_beamline.errors` of ours: the config validates
schedules with it, and :mod:`cdi_beamline.phasing` re-exports it for the phasing code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import CDIValueError

__all__ = ["ALGORITHMS", "ER", "HIO", "RAAR", "Step", "Schedule", "parse_schedule"]

ALGORITHMS = ("ER", "HIO", "RAAR")


@dataclass(frozen=True)
class Schedule:
    """A sequence of blocks, repeated ``count`` times. Blocks are :class:`Step` or Schedule."""

    blocks: tuple = ()
    count: int = 1

    def __mul__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return Schedule(_as_blocks(self) + _as_blocks(other))

    def __pow__(self, n: int) -> Schedule:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise CDIValueError(f"schedule repeat count must be a positive integer, got {n!r}")
        if len(self.blocks) == 1:  # (X**a)**n == X**(a*n)
            inner = self.blocks[0]
            return Schedule((_repeat(inner, self.count * n),))
        return Schedule(self.blocks, self.count * n)

    def __len__(self) -> int:
        return self.count * sum(len(b) for b in self.blocks)

    def __iter__(self):
        """Yield ``(algorithm, beta)`` for every iteration, in time order."""
        for _ in range(self.count):
            for b in self.blocks:
                yield from b

    def __str__(self) -> str:
        body = " * ".join(_str_block(b) for b in self.blocks)
        if self.count == 1:
            return body
        return f"({body})**{self.count}"

    def __repr__(self) -> str:
        return f"Schedule({str(self)!r})"

    def __call__(self, beta: float) -> Schedule:
        """``HIO(0.7)``: the same single algorithm with its own beta."""
        if len(self.blocks) != 1 or not isinstance(self.blocks[0], Step) or self.count != 1:
            raise CDIValueError("only a single algorithm takes a beta, e.g. HIO(0.7)")
        step = self.blocks[0]
        if step.name == "ER":
            raise CDIValueError("ER takes no beta")
        return Schedule((Step(step.name, float(beta), step.count),))

    def resized(self, iterations: int) -> Schedule:
        """The same structure with every count scaled to ``iterations`` in total.

        Rounding leftovers go to the last step, so ``len(result) == iterations``.
        """
        if iterations < 1:
            raise CDIValueError(f"iterations must be >= 1, got {iterations}")
        scaled = _scale(self, iterations / len(self))
        if len(scaled) == iterations:
            return scaled
        # Rounding changed the total: run-length encode the scaled sequence, trimmed or
        # extended with its last algorithm to exactly ``iterations``.
        seq = list(scaled)[:iterations]
        seq += [seq[-1]] * (iterations - len(seq))
        steps: list[Step] = []
        for name, beta in seq:
            if steps and (steps[-1].name, steps[-1].beta) == (name, beta):
                steps[-1] = Step(name, beta, steps[-1].count + 1)
            else:
                steps.append(Step(name, beta, 1))
        return Schedule(tuple(steps))


@dataclass(frozen=True)
class Step:
    """One algorithm applied ``count`` times; ``beta`` None means the config's."""

    name: str
    beta: float | None = None
    count: int = 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for _ in range(self.count):
            yield self.name, self.beta


def _repeat(block, n):
    if isinstance(block, Step):
        return Step(block.name, block.beta, block.count * n)
    return Schedule(block.blocks, block.count * n)


def _as_blocks(s: Schedule) -> tuple:
    return s.blocks if s.count == 1 else (s,)


def _str_block(b) -> str:
    if isinstance(b, Step):
        name = b.name if b.beta is None else f"{b.name}({b.beta:g})"
        return name if b.count == 1 else f"{name}**{b.count}"
    return str(b) if b.count > 1 else f"({b})"


def _scale(s: Schedule, factor: float) -> Schedule:
    blocks: list[Step | Schedule] = []
    for b in s.blocks:
        if isinstance(b, Step):
            blocks.append(Step(b.name, b.beta, max(1, round(b.count * factor))))
        else:
            blocks.append(_scale(b, factor))
    return Schedule(tuple(blocks), s.count)


ER = Schedule((Step("ER"),))
HIO = Schedule((Step("HIO"),))
RAAR = Schedule((Step("RAAR"),))

_TOKEN = re.compile(r"\s*(?:(\*\*)|(\*)|(\()|(\))|([A-Za-z]+)|(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?))")


def parse_schedule(text: str | Schedule) -> Schedule:
    """Read a schedule string such as ``"(ER**20 * HIO(0.9)**180)**3 * ER**20"``.

    Raises
    ------
    CDIValueError
        Naming the position and what was expected, for an unknown algorithm, a
        non-integer or zero repeat count, or unbalanced parentheses.
    """
    if isinstance(text, Schedule):
        return text
    tokens = _tokenize(text)
    parser = _Parser(text, tokens)
    sched = parser.expr()
    if parser.pos != len(tokens):
        parser.fail("end of schedule")
    return sched


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise CDIValueError(f"schedule {text!r}: unexpected character {text[pos:].lstrip()[:1]!r} at {pos}")
        group = m.lastindex or 0  # one group matched: the token alternatives are all groups
        kind = ("pow", "mul", "lp", "rp", "name", "num")[group - 1]
        tokens.append((kind, m.group(group), m.start(group)))
        pos = m.end()
    return tokens


class _Parser:
    """expr := term ('*' term)* ; term := atom ('**' INT)? ; atom := NAME ('(' NUM ')')? | '(' expr ')'"""

    def __init__(self, text, tokens):
        self.text, self.tokens, self.pos = text, tokens, 0

    def peek(self):
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self, kind, what):
        if self.peek() != kind:
            self.fail(what)
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok[1]

    def fail(self, what):
        if self.pos < len(self.tokens):
            _, value, at = self.tokens[self.pos]
            raise CDIValueError(f"schedule {self.text!r}: expected {what} at {at}, got {value!r}")
        raise CDIValueError(f"schedule {self.text!r}: expected {what} at the end")

    def expr(self) -> Schedule:
        out = self.term()
        while self.peek() == "mul":
            self.pos += 1
            out = out * self.term()
        return out

    def term(self) -> Schedule:
        atom = self.atom()
        if self.peek() == "pow":
            self.pos += 1
            num = self.take("num", "a repeat count")
            if not num.isdigit() or int(num) < 1:
                raise CDIValueError(f"schedule {self.text!r}: repeat count must be a positive integer, got {num!r}")
            atom = atom ** int(num)
        return atom

    def atom(self) -> Schedule:
        if self.peek() == "lp":
            self.pos += 1
            inner = self.expr()
            self.take("rp", "')'")
            return inner
        name = self.take("name", "an algorithm (ER, HIO, RAAR) or '('")
        if name.upper() not in ALGORITHMS:
            raise CDIValueError(
                f"schedule {self.text!r}: unknown algorithm {name!r}; use one of {', '.join(ALGORITHMS)}"
            )
        step = Schedule((Step(name.upper()),))
        if self.peek() == "lp":
            self.pos += 1
            beta = float(self.take("num", "a beta value"))
            self.take("rp", "')'")
            if not 0.0 < beta <= 1.0:
                raise CDIValueError(f"schedule {self.text!r}: beta of {name} must be in (0, 1], got {beta:g}")
            step = step(beta)
        return step
