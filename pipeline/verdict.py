"""The verdict every validator returns, for molecules and crystals alike: a failure is data.

A validator never raises on garbage input (NaN coordinates, merged atoms, empty structures,
unknown elements); it returns a frozen :class:`Verdict` whose ``reason`` says why it failed
(``"ok"``, or a remark starting with ``"ok"``, when it passes). Validators that measure something
extend it with their numbers (``molecule_checks.StabilityVerdict``, ``ValidityVerdict``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """Pass (``ok``) or fail, with its ``reason``."""

    ok: bool
    reason: str


__all__ = ["Verdict"]
