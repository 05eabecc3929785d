"""CelebA's 40 attribute names in the dataset's own column order, and name lookup with helpful errors.

Besides the 40 binary attributes, the editing tools accept the pseudo-attribute ``pose``: the continuous yaw
score derived from the five landmarks (see ``common.celeba.yaw_from_landmarks``).
"""

from __future__ import annotations

import difflib

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
NUM_ATTRIBUTES = len(CELEBA_ATTRIBUTES)  # 40
POSE = "pose"  # the continuous yaw score, editable like an attribute
ATTRIBUTE_INDEX: dict[str, int] = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}


class UnknownAttributeError(ValueError):
    """An attribute name that is not one of CelebA's 40 (nor ``pose`` where that is allowed)."""


def suggest(name: str, choices, n: int = 3) -> list[str]:
    """The closest valid names to a misspelt one (case-insensitive), best first."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[c] for c in close]


def resolve_attribute(name: str, allow_pose: bool = True) -> str:
    """Return the canonical spelling of an attribute name, or raise with the closest valid ones.

    Matching is case-insensitive (``smiling`` -> ``Smiling``); ``pose`` (also ``yaw``) names the yaw score.
    """
    if allow_pose and name.lower() in (POSE, "yaw"):
        return POSE
    for valid in CELEBA_ATTRIBUTES:
        if valid.lower() == name.lower():
            return valid
    choices = CELEBA_ATTRIBUTES + ((POSE,) if allow_pose else ())
    close = suggest(name, choices)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownAttributeError(
        f"unknown attribute {name!r}{hint} (valid: CelebA's 40 names{', or pose' if allow_pose else ''})"
    )


def attribute_index(name: str) -> int:
    """Column of a (binary) attribute in CelebA's order."""
    return ATTRIBUTE_INDEX[resolve_attribute(name, allow_pose=False)]
