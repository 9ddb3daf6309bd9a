"""StackOverflow next-word prediction: the vocabulary, and sentences -> token rows.

The federation is TFF's (Authors of TFF 2019; Reddi et al. 2021's StackOverflow NWP): one
client per user, 342,477 train clients and 135 million sentences, sizes from a few sentences
to tens of thousands. jaxfl follows FedJAX's ``StackoverflowTokenizer`` and TFF's baseline:

- Vocabulary: the :data:`VOCAB_WORDS` (10,000) most frequent words of the published word
  counts (``stackoverflow.word_count``: a line ``word count`` per word, most frequent first),
  as tokens 3..10,002 in that order; PAD 0, BOS 1, EOS 2, and one OOV token, 10,003, for every
  other word: 10,004 tokens.
- A sentence (its ``tokens`` feature: words separated by spaces) is ``BOS w_1 .. w_n EOS``;
  its inputs are all but the last token and its targets all but the first, each cut or padded
  to ``--sequence-length`` (20, Reddi et al.'s): a long sentence loses its end (and its EOS
  target), as FedJAX's ``to_tensor(shape=...)`` and TFF's ``max_seq_len`` do. One row per
  sentence; sentences are not joined (unlike Shakespeare's lines).
- ``--max-client-examples`` caps each user's sentences at their first M (Reddi et al. cap at
  1,000: ``max_elements_per_user`` in the authors' ``hyperparameters.md``); with a cap the
  user's other sentences are never tokenized.

Only the chosen clients are read: the files' per-client counts (FedJAX's ``num_examples``,
TFF's ``client_metadata``) choose them, then only their rows are decompressed or parsed, so
``--clients 1000`` does not read 135 million sentences.

Reddi et al. report accuracy without OOV and EOS targets: ``test_acc_no_oov_eos``
(:func:`jaxfl.core.train.sequence_metrics`), beside the pad-masked ``test_acc``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxfl.data.natural.store import NaturalDataError

VOCAB_WORDS = 10_000
PAD, BOS, EOS = 0, 1, 2
NUM_RESERVED = 3
SEQUENCE_LENGTH = 20
WORD_COUNTS = "stackoverflow.word_count"


def vocab_size(words: int = VOCAB_WORDS) -> int:
    """Tokens of a vocabulary of ``words`` words: PAD, BOS, EOS, the words, OOV."""
    return words + NUM_RESERVED + 1


def word_counts_file(folder: Path) -> Path:
    """``folder``'s ``stackoverflow.word_count``, extracted from TFF's
    ``stackoverflow.word_count.tar.bz2`` first when only that is there."""
    plain = folder / WORD_COUNTS
    packed = folder / f"{WORD_COUNTS}.tar.bz2"
    if not plain.is_file() and packed.is_file():
        with tarfile.open(packed) as archive:
            member = next((m for m in archive.getmembers() if m.name.endswith(WORD_COUNTS)), None)
            if member is None:
                raise NaturalDataError(f"{packed}: holds no {WORD_COUNTS}; download it again")
            plain.write_bytes(archive.extractfile(member).read())
    return plain


def read_vocabulary(path: str | Path, words: int = VOCAB_WORDS) -> list[str]:
    """The first ``words`` words of a word-count file (``word count`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise NaturalDataError(
            f"{path}: no such file; --dataset stackoverflow needs the published word counts "
            f"({WORD_COUNTS}, from FedJAX's or TFF's StackOverflow downloads) in --data-dir"
        )
    vocabulary = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if len(vocabulary) == words:
                break
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise NaturalDataError(
                    f"{path}: line {number} is not 'word count'; not StackOverflow's word counts"
                )
            vocabulary.append(parts[0].decode("utf-8", "replace"))
    if len(vocabulary) < words:
        raise NaturalDataError(
            f"{path}: {len(vocabulary)} words, fewer than the vocabulary's {words}; the file "
            "is truncated or not StackOverflow's word counts"
        )
    return vocabulary


def token_table(vocabulary: Sequence[str]) -> dict[str, int]:
    """word -> token (3 + its rank); any other word is OOV, ``vocab_size(len(vocabulary)) - 1``."""
    return {w: NUM_RESERVED + k for k, w in enumerate(vocabulary)}


def sentences_to_sequences(
    sentences: Sequence, table: dict[str, int], sequence_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sentences (bytes or str, words separated by spaces) -> (inputs, targets), each
    (n, sequence_length) int32 (the module's docstring)."""
    oov = NUM_RESERVED + len(table)
    x = np.full((len(sentences), sequence_length), PAD, np.int32)
    y = np.full((len(sentences), sequence_length), PAD, np.int32)
    for i, sentence in enumerate(sentences):
        text = sentence.decode("utf-8", "replace") if isinstance(sentence, bytes) else sentence
        ids = [BOS, *(table.get(w, oov) for w in text.split(" ") if w), EOS]
        inputs, targets = ids[:-1][:sequence_length], ids[1:][:sequence_length]
        x[i, : len(inputs)], y[i, : len(targets)] = inputs, targets
    return x, y
