"""StackOverflow next-word prediction: the word counts, sentences -> rows by hand, FedJAX's
and TFF's SQLite files written here by their descriptions and read for the chosen users only,
a word-count file that does not match, and a run with the nwp-lstm."""

import json
import sqlite3
import zlib

import msgpack
import numpy as np
import pytest

from jaxfl.data.natural import datasets
from jaxfl.data.natural.store import NaturalDataError

from .test_language import BOS, EOS, PAD, _fedjax_bytes_column
from .test_natural import _ld

# ----- StackOverflow: word counts, sentences, the two SQLite formats -------------------------
WORDS = [f"w{k}" for k in range(10_000)]  # the vocabulary, most frequent first
USERS = {  # user -> (train sentences, test sentences)
    "00000123": (["w0 w1 w2", "w5 unknown w9999"], ["w3"]),
    "00000456": (["w7 w7 w7 w7 w7 w7 w7 w7 w7 w7"], []),  # no test sentence
    "00000789": (["w1", "w2", "w3"], ["w4 w5"]),
    "00001000": (["w8 w9"], ["w10"]),
}


def _write_word_counts(folder, words=WORDS):
    lines = [f"{w} {1_000_000 - k}" for k, w in enumerate(words)]
    (folder / "stackoverflow.word_count").write_text("\n".join(lines) + "\n")


def _write_fedjax_stackoverflow(folder, corrupt=None):
    for split, index in (("train", 0), ("test", 1)):
        db = sqlite3.connect(folder / f"stackoverflow_{split}.sqlite")
        db.execute("CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, data BLOB "
                   "NOT NULL, num_examples INTEGER NOT NULL)")  # fmt: skip
        for user, sentences in USERS.items():
            if not sentences[index]:
                continue  # FedJAX's test file holds only the users with test sentences
            column = _fedjax_bytes_column([s.encode() for s in sentences[index]])
            blob = zlib.compress(msgpack.packb({"tokens": column}))
            blob = b"not zlib" if user == corrupt else blob
            db.execute("INSERT INTO federated_data VALUES (?, ?, ?)",
                       (user.encode(), blob, len(sentences[index])))  # fmt: skip
        db.commit()
        db.close()


def _tokens_example(sentence: str) -> bytes:
    entry = _ld(1, b"tokens") + _ld(2, _ld(1, _ld(1, sentence.encode())))
    return _ld(1, _ld(1, entry))


def _write_tff_stackoverflow(folder):
    db = sqlite3.connect(folder / "stackoverflow.sqlite")
    db.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
               "serialized_example_proto BLOB NOT NULL)")  # fmt: skip
    db.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, "
               "num_examples INTEGER NOT NULL)")  # fmt: skip
    for split, index in (("train", 0), ("test", 1)):
        for user, sentences in USERS.items():
            if not sentences[index]:
                continue
            db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)",
                       (user, split, len(sentences[index])))  # fmt: skip
            for sentence in sentences[index]:
                db.execute("INSERT INTO examples VALUES (?, ?, ?)",
                           (split, user, _tokens_example(sentence)))  # fmt: skip
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def stackoverflow_folders(tmp_path_factory):
    from jaxfl.data.natural import stackoverflow

    root = tmp_path_factory.mktemp("stackoverflow")
    for fmt in ("fedjax", "tff"):
        (root / fmt).mkdir()
        _write_word_counts(root / fmt)
    _write_fedjax_stackoverflow(root / "fedjax")
    _write_tff_stackoverflow(root / "tff")
    return root, stackoverflow


def test_stackoverflow_sentences_become_one_row_each(stackoverflow_folders):
    _, so = stackoverflow_folders
    table = so.token_table(WORDS)
    oov = so.vocab_size() - 1
    assert oov == 10_003 and table["w0"] == 3 and table["w9999"] == 10_002
    x, y = so.sentences_to_sequences([b"w0 w1", b"w5 unknown w9999"], table, 4)
    assert x.tolist() == [[BOS, 3, 4, PAD], [BOS, 8, oov, 10_002]]
    assert y.tolist() == [[3, 4, EOS, PAD], [8, oov, 10_002, EOS]]
    x, y = so.sentences_to_sequences([b"w1 w2 w3 w4 w5"], table, 3)  # too long: cut
    assert x.tolist() == [[BOS, 4, 5]] and y.tolist() == [[4, 5, 6]]  # its EOS target is lost


@pytest.mark.parametrize("fmt", ["fedjax", "tff"])
def test_stackoverflow_from_each_format_reads_the_chosen_users(stackoverflow_folders, fmt):
    root, so = stackoverflow_folders
    data = datasets.load_natural("stackoverflow", root / fmt, 3, sequence_length=6)
    assert data.num_classes == 10_004 and data.train_x.shape[1:] == (6,)
    table = so.token_table(WORDS)
    sizes = [len(USERS[u][0]) for u in USERS]
    order = [list(USERS)[k] for k in datasets.chosen_positions(sizes, 3, "stackoverflow")]
    for k, user in enumerate(order):
        x, y = so.sentences_to_sequences(USERS[user][0], table, 6)
        np.testing.assert_array_equal(data.train_x[data.train_groups[k]], x)
        np.testing.assert_array_equal(data.train_y[data.train_groups[k]], y)
        assert len(data.test_groups[k]) == len(USERS[user][1])  # 0 where the user has none
    capped = datasets.load_natural("stackoverflow", root / fmt, 3, max_examples=1)
    assert [len(g) for g in capped.train_groups] == [1, 1, 1]


def test_stackoverflow_reads_only_the_chosen_users(tmp_path):
    """A user not chosen is never decompressed: its corrupt blob does not matter."""
    _write_word_counts(tmp_path)
    sizes = [len(USERS[u][0]) for u in USERS]
    chosen = {list(USERS)[k] for k in datasets.chosen_positions(sizes, 2, "stackoverflow")}
    (left_out,) = [u for u in USERS if u not in chosen and USERS[u][1]][:1]
    _write_fedjax_stackoverflow(tmp_path, corrupt=left_out)
    data = datasets.load_natural("stackoverflow", tmp_path, 2)
    assert len(data.train_groups) == 2
    with pytest.raises(NaturalDataError, match="is corrupt"):
        datasets.load_natural("stackoverflow", tmp_path, 4)


def test_a_word_count_file_that_does_not_match_is_named(tmp_path):
    _write_fedjax_stackoverflow(tmp_path)
    _write_word_counts(tmp_path, WORDS[:500])
    with pytest.raises(NaturalDataError, match="500 words, fewer than the vocabulary's 10000"):
        datasets.load_natural("stackoverflow", tmp_path, 2)
    (tmp_path / "stackoverflow.word_count").write_text("w0 w1 w2\n")
    with pytest.raises(NaturalDataError, match="line 1 is not 'word count'"):
        datasets.load_natural("stackoverflow", tmp_path, 2)


def test_a_stackoverflow_run_with_the_nwp_lstm(stackoverflow_folders, tmp_path):
    from jaxfl.cli import run

    root, _ = stackoverflow_folders
    argv = ["--algo", "fedavg", "--dataset", "stackoverflow", "--data-dir", str(root / "fedjax"),
            "--clients", "4", "--clients-per-round", "2", "--rounds", "1", "--devices", "1",
            "--batch-size", "2"]  # fmt: skip
    assert run.main([*argv, "--out", str(tmp_path / "r")]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"] == "nwp-lstm"  # the default on stackoverflow
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= record["test_acc_no_oov_eos"] <= 1 and record["test_perplexity"] > 1
    # one user has no test sentence: the per-client mean is over the other three
    data = datasets.load_natural("stackoverflow", root / "fedjax", 4)
    has_test = np.array([len(g) > 0 for g in data.test_groups])
    assert has_test.sum() == 3
    client_acc = np.load(tmp_path / "r" / "client_acc.npy")
    assert record["client_acc_mean"] == float(np.mean(client_acc[has_test].astype(np.float64)))
