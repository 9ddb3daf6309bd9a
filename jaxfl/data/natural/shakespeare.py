"""Shakespeare next-character prediction: the vocabulary, and snippets -> token sequences.

The federation is McMahan et al.'s (AISTATS 2017): one client per speaking role of the
plays, 715 roles in TFF's and FedJAX's files. jaxfl follows FedJAX's and TFF's convention:

- Vocabulary of 90 tokens: :data:`PAD` 0, :data:`BOS` 1, :data:`EOS` 2, the 86 characters of
  TFF's text-generation tutorial (:data:`CHARACTERS`) as 3..88, :data:`OOV` 89 for every other
  byte (FedJAX's ``shakespeare.TABLE``). A model predicts all 90; TFF's and FedJAX's baselines
  use the same 90 outputs.
- A role's snippets (its lines, as bytes) are joined into one token stream, each snippet as
  ``BOS c_1 .. c_n EOS``; inputs are the stream without its last token and targets the stream
  without its first, both cut into rows of ``sequence_length`` (80, McMahan et al.'s) and the
  last row padded with PAD. So ``[b"ABCD", b"E"]`` with length 3 gives inputs
  ``[BOS A B] [C D EOS] [BOS E PAD]`` and targets ``[A B C] [D EOS BOS] [E EOS PAD]``: every
  character of the role is a target once (TFF's tutorial cuts rows of 81 and loses one
  target in 81; FedJAX's ``preprocess_client`` does what is written here).

LEAF's JSON stores the same text differently: each example is an 80-character window ``x`` and
the character that follows, ``y`` (a window per character of the role, overlapping). jaxfl
reads such an example as one sequence: inputs ``x``, targets ``x[1:] + y``, in the same
90-token vocabulary (LEAF's own 80-character alphabet is not offered: its characters outside
the 86 map to OOV).

Which targets an accuracy counts: :func:`jaxfl.core.train.accuracy` masks PAD only (TFF's
``MaskedCategoricalAccuracy(masked_tokens=[pad])``, the metric of Reddi et al.'s Shakespeare
baseline); ``test_acc_no_eos`` (:func:`jaxfl.core.metrics.global_test_accuracy`'s sequence
extras) also masks EOS, FedJAX's ``accuracy_no_eos``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxfl.data.natural.store import ClientColumns, NaturalDataError

# the 86 characters of TFF's "Federated Learning for Text Generation" tutorial, in its order
CHARACTERS = (
    b"dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
)
PAD, BOS, EOS = 0, 1, 2
NUM_RESERVED = 3
OOV = NUM_RESERVED + len(CHARACTERS)  # 89
VOCAB_SIZE = OOV + 1  # 90
SEQUENCE_LENGTH = 80  # McMahan et al.'s

TABLE = np.full(256, OOV, dtype=np.int32)  # byte -> token
TABLE[np.frombuffer(CHARACTERS, np.uint8)] = NUM_RESERVED + np.arange(len(CHARACTERS))
assert len(CHARACTERS) == 86 and len(set(CHARACTERS)) == 86


def _as_bytes(text) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def encode(text) -> np.ndarray:
    """A string or bytes -> its characters' tokens (n,) int32 (no BOS/EOS)."""
    return TABLE[np.frombuffer(_as_bytes(text), np.uint8)]


def decode(tokens: Sequence[int]) -> str:
    """Tokens -> text; PAD, BOS and EOS are dropped and OOV shows as ``?``...
    for reading a sample, not for round trips."""
    chars = []
    for t in np.asarray(tokens).tolist():
        if NUM_RESERVED <= t < OOV:
            chars.append(chr(CHARACTERS[t - NUM_RESERVED]))
        elif t == OOV:
            chars.append("\ufffd")
    return "".join(chars)


def snippets_to_sequences(
    snippets: Sequence, sequence_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """One role's snippets -> (inputs, targets), each (M, sequence_length) int32 (the module's
    docstring): the role's BOS/EOS-delimited token stream cut into rows, the last padded."""
    if sequence_length < 1:
        raise NaturalDataError(f"--sequence-length {sequence_length}: allowed an integer >= 1")
    pieces = []
    for snippet in snippets:
        pieces += [np.array([BOS], np.int32), encode(snippet), np.array([EOS], np.int32)]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    n = max(len(stream) - 1, 0)
    rows = -(-n // sequence_length)
    inputs = np.full(rows * sequence_length, PAD, np.int32)
    targets = np.full(rows * sequence_length, PAD, np.int32)
    inputs[:n], targets[:n] = stream[:-1], stream[1:]
    return inputs.reshape(rows, sequence_length), targets.reshape(rows, sequence_length)


def windows_to_sequences(
    windows: Sequence, next_chars: Sequence, sequence_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """LEAF's examples (an ``x`` window of characters, its next character ``y``) -> (inputs,
    targets) (M, T) int32: inputs ``x``, targets ``x[1:] + y``. Every window must be
    ``sequence_length`` long (LEAF's are 80)."""
    inputs, targets = [], []
    for window, nxt in zip(windows, next_chars, strict=True):
        x = encode(window)
        if len(x) != sequence_length:
            raise NaturalDataError(
                f"--sequence-length {sequence_length}: LEAF's file holds windows of {len(x)} "
                f"characters; give --sequence-length {len(x)}"
            )
        inputs.append(x)
        targets.append(np.concatenate([x[1:], encode(nxt)[:1]]))
    if not inputs:
        return np.zeros((0, sequence_length), np.int32), np.zeros((0, sequence_length), np.int32)
    return np.stack(inputs), np.stack(targets)


def to_sequences(store: ClientColumns, sequence_length: int, fmt: str) -> ClientColumns:
    """Every client's text -> its ``x``/``y`` token rows: ``fmt`` "snippets" (column
    ``snippets``: FedJAX's and TFF's files, the generator) or "leaf" (columns ``x`` windows and
    ``y`` next characters). Client order and ids are kept; sizes become rows of tokens."""
    examples = []
    for k in range(store.num_clients):
        client = store.client(k)
        if fmt == "snippets":
            x, y = snippets_to_sequences(client["snippets"], sequence_length)
        else:
            x, y = windows_to_sequences(client["x"], client["y"], sequence_length)
        examples.append({"x": x, "y": y})
    if not examples:
        return ClientColumns([], {"x": np.zeros((0, sequence_length), np.int32),
                                  "y": np.zeros((0, sequence_length), np.int32)},
                             np.zeros(1, np.int64))  # fmt: skip
    return ClientColumns.from_clients(store.client_ids, examples)
