"""The seven FER2013 emotion classes, their display names, emoji and folder-name aliases."""

from __future__ import annotations

# Index order used everywhere in this package (FER2013's folder order).
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
NUM_CLASSES = len(CLASS_NAMES)

DISPLAY_NAMES: dict[str, str] = {
    "angry": "Angry",
    "disgust": "Disgusted",
    "fear": "Fearful",
    "happy": "Happy",
    "neutral": "Neutral",
    "sad": "Sad",
    "surprise": "Surprised",
}

EMOJI: dict[str, str] = {
    "angry": "😠",
    "disgust": "🤢",
    "fear": "😨",
    "happy": "😄",
    "neutral": "😐",
    "sad": "😢",
    "surprise": "😲",
}

# The original fer2013.csv codes its `emotion` column 0..6 in a different order
# (0=Angry 1=Disgust 2=Fear 3=Happy 4=Sad 5=Surprise 6=Neutral).
FER_CSV_CODES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

_ALIASES: dict[str, str] = {
    "anger": "angry",
    "mad": "angry",
    "disgusted": "disgust",
    "fearful": "fear",
    "scared": "fear",
    "afraid": "fear",
    "happiness": "happy",
    "joy": "happy",
    "calm": "neutral",
    "sadness": "sad",
    "unhappy": "sad",
    "surprised": "surprise",
}


def canonical_label(name: str) -> str | None:
    """Map a class or folder name (any case, aliases allowed) onto a class name, or None if unknown."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in CLASS_NAMES:
        return key
    return _ALIASES.get(key)


def display(name: str, with_emoji: bool = True) -> str:
    """Human-readable label for a class name, e.g. 'Happy 😄'."""
    text = DISPLAY_NAMES.get(name, name.title())
    return f"{text} {EMOJI[name]}" if with_emoji and name in EMOJI else text
