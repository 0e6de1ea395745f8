"""Provenance: which training faces every network of a checkpoint held out and never trained on.

A temperature can be fitted honestly (``calibrate``), and recipes compared without a test split (``--split
heldout``), only on faces no network of the model saw. A checkpoint's ``train_config`` says how each network
trained; these functions read it, an ensemble's ``members`` included, and follow fine-tunes back to the network
they started from (``init_held_out``, recorded by the trainer).
"""

from __future__ import annotations


def member_train_configs(train_config: dict) -> list:
    """The training settings of each network a checkpoint's ``train_config`` describes (an ensemble lists its
    ``members``; a single network is its own)."""
    members = train_config.get("members") if isinstance(train_config, dict) else None
    return members if isinstance(members, list) else [train_config]


def unseen_split(train_config: dict) -> tuple[float, int] | None:
    """``(val_split, split seed)``: the share of train that every network of a checkpoint held out and never
    trained on, or None when some network may have seen every training face: trained on all of train or with
    another carve-out, distilled from a teacher or fine-tuned from weights that did not hold out the same faces
    (``teacher_held_out`` and ``init_held_out``, recorded by the trainer from the teacher's and the ``init_from``
    checkpoint's own provenance)."""
    splits = set()
    for c in member_train_configs(train_config):
        if not isinstance(c, dict):
            return None
        fraction, seed = c.get("val_split"), c.get("seed") if c.get("split_seed") is None else c.get("split_seed")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            return None
        if isinstance(seed, bool) or not isinstance(seed, int):
            return None
        if c.get("init_from") and c.get("init_held_out") != [fraction, seed]:
            return None
        if c.get("teacher") and c.get("teacher_held_out") != [fraction, seed]:
            return None
        splits.add((float(fraction), seed))
    return next(iter(splits)) if len(splits) == 1 else None
