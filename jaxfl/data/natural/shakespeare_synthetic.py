"""A Shakespeare-like federation, generated: roles speaking lines of play-like English.

``--dataset shakespeare_synthetic`` needs no download (CI, the README, a first run): the same
task and preprocessing as ``--dataset shakespeare`` (:mod:`jaxfl.data.natural.shakespeare`),
on generated text, not copied text. The generative process:

- :data:`NUM_ROLES` roles (more when ``--clients`` asks for more); role k speaks
  n_k = floor(lognormal(2.5, 1)) + 2 lines, capped at 300 (heavy-tailed like the plays' roles:
  median ~14, a few roles with hundreds).
- Each role has its own taste: a Dirichlet(0.3) weighting over each word class (subjects,
  verbs, determiners, adjectives, nouns, adverbs) and over the sentence templates, so roles
  differ in what they say (non-IID), as characters of a play do.
- A line is one or two sentences drawn from four templates (``I love thy noble crown.``,
  ``O cruel night, thou fears the grave!``, ...), written from a small word list here.
- A role's last 20% of lines (at least one) are its test split, as TFF's and LEAF's
  Shakespeare hold out the end of each role's text; the rest its train split.

Next-character accuracy a model can reach is bounded by the choice of words (each word is
drawn), not by spelling, which is learnable: a character LSTM gets well above the 1/90 of a
uniform guess and the ~17% of always predicting a space.
"""

from __future__ import annotations

import numpy as np

from jaxfl.data.natural.store import ClientColumns

NUM_ROLES = 300
MIN_LINES, MAX_LINES = 2, 300
TEST_FRACTION = 0.2

WORDS = {
    "subject": ("I", "thou", "he", "she", "we", "they", "my lord", "good sir", "this man",
                "the duke", "my lady", "the fool"),
    "verb": ("love", "hate", "bear", "seek", "keep", "take", "give", "hold", "fear", "know",
             "call", "bring", "leave", "find", "speak of", "swear by", "dream of", "weep for",
             "serve", "mark"),
    "det": ("the", "my", "thy", "his", "her", "our", "that", "a"),
    "adj": ("noble", "gentle", "sweet", "cruel", "false", "fair", "good", "poor", "proud",
            "wise", "wretched", "bloody", "royal", "dear", "honest", "young", "old", "dark",
            "bright", "merry"),
    "noun": ("king", "queen", "sword", "crown", "heart", "night", "day", "love", "death",
             "blood", "grave", "honour", "father", "son", "daughter", "brother", "friend",
             "soul", "heaven", "earth", "tongue", "eye", "hand", "face", "world", "time", "war",
             "peace", "master", "letter", "ring", "house", "gold", "storm", "moon", "sun"),
    "adv": ("tonight", "indeed", "again", "alone", "forever", "too soon", "no more", "in vain",
            "with grace", "anon"),
    "end": (".", "!", "?", ";"),
}  # fmt: skip
TEMPLATES = (
    ("subject", "verb", "det", "adj", "noun", "end"),
    ("det", "noun", "verb", "det", "noun", "adv", "end"),
    ("O", "adj", "noun", ",", "subject", "verb", "det", "noun", "end"),
    ("subject", "verb", "det", "noun", "adv", "end"),
)


def role_lines(num_roles: int, rng: np.random.Generator) -> np.ndarray:
    """(R,) lines per role: floor(lognormal(2.5, 1)) + 2, capped at 300."""
    return np.minimum(rng.lognormal(2.5, 1.0, num_roles).astype(np.int64) + MIN_LINES, MAX_LINES)


def _sentence(template, taste, rng) -> str:
    words = []
    for slot in template:
        if slot in WORDS:
            options = WORDS[slot]
            words.append(options[rng.choice(len(options), p=taste[slot])])
        else:
            words.append(slot)
    text = " ".join(words).replace(" ,", ",")
    for mark in WORDS["end"]:
        text = text.replace(" " + mark, mark)
    return text[0].upper() + text[1:]


def generate(num_roles: int = NUM_ROLES, *, seed: int = 0) -> tuple[ClientColumns, ClientColumns]:
    """(train, test) roles with one column ``snippets``: each role's lines, as bytes."""
    rng = np.random.default_rng([seed, 0x5BEA])
    lines = role_lines(num_roles, rng)
    ids, train, test = [], [], []
    for k, n in enumerate(lines):
        taste = {slot: rng.dirichlet(np.full(len(options), 0.3)) for slot, options in
                 WORDS.items()}  # fmt: skip
        template_p = rng.dirichlet(np.full(len(TEMPLATES), 0.3))
        spoken = []
        for _ in range(n):
            count = 1 + int(rng.random() < 0.4)
            picks = rng.choice(len(TEMPLATES), count, p=template_p)
            spoken.append(" ".join(_sentence(TEMPLATES[t], taste, rng) for t in picks).encode())
        n_test = max(1, int(round(TEST_FRACTION * n)))
        ids.append(f"ROLE_{k:04d}")
        train.append({"snippets": np.array(spoken[: n - n_test], dtype=object)})
        test.append({"snippets": np.array(spoken[n - n_test :], dtype=object)})
    return ClientColumns.from_clients(ids, train), ClientColumns.from_clients(ids, test)
