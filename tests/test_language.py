"""The language tasks: Shakespeare's preprocessing against hand-made cases, its three published
formats read from tiny files written here by the formats' descriptions, the sequence metrics
and losses against hand computations, the LSTM against its equations step by step, the
vmapped round against the per-client loop, and the command line (runs, refusals)."""

import json
import sqlite3
import zlib

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from jaxfl.configs import with_capability
from jaxfl.core import train
from jaxfl.data.natural import datasets, shakespeare, shakespeare_synthetic
from jaxfl.data.natural.store import NaturalDataError

from .test_natural import _ld
from .tolerance import ULPS, assert_trees_close

BOS, EOS, PAD = shakespeare.BOS, shakespeare.EOS, shakespeare.PAD


def tok(text: str) -> list[int]:
    """Tokens by the published table: a character's position in TFF's 86-character string, +3."""
    return [3 + shakespeare.CHARACTERS.index(c.encode()) for c in text]


def test_the_vocabulary_is_fedjax_and_tffs():
    assert shakespeare.VOCAB_SIZE == 90 and shakespeare.OOV == 89
    assert shakespeare.encode("dh").tolist() == [3, 4]  # the table's first two characters
    assert shakespeare.encode("\r").tolist() == [88]  # its last
    assert shakespeare.encode("~}").tolist() == [89, 89]  # outside the 86: OOV
    assert shakespeare.decode(shakespeare.encode("To be, or not")) == "To be, or not"


def test_snippets_become_rows_of_inputs_and_next_tokens():
    """FedJAX's documented example: [b"ABCD", b"E"] with rows of 3."""
    a, b, c, d, e = tok("ABCDE")
    x, y = shakespeare.snippets_to_sequences([b"ABCD", b"E"], 3)
    assert x.tolist() == [[BOS, a, b], [c, d, EOS], [BOS, e, PAD]]
    assert y.tolist() == [[a, b, c], [d, EOS, BOS], [e, EOS, PAD]]
    x, y = shakespeare.snippets_to_sequences([b"AB"], 80)  # one partial row
    assert x.shape == (1, 80) and x[0, :3].tolist() == [BOS, a, b] and (x[0, 3:] == PAD).all()
    assert y[0, :3].tolist() == [a, b, EOS] and (y[0, 3:] == PAD).all()


def test_leaf_windows_become_a_sequence_each():
    x, y = shakespeare.windows_to_sequences(["ABC", "BCD"], ["D", "E"], 3)
    assert x.tolist() == [tok("ABC"), tok("BCD")] and y.tolist() == [tok("BCD"), tok("CDE")]
    with pytest.raises(NaturalDataError, match="--sequence-length 4: LEAF's file holds windows"):
        shakespeare.windows_to_sequences(["ABC"], ["D"], 4)


# ----- the three formats, written by their descriptions ----------------------------------------
ROLES = {
    "THE_TRAGEDY_OF_KING_LEAR_KING": ([b"Meantime we shall express our darker purpose.",
                                       b"Give me the map there."], [b"Know that we have divided"]),
    "THE_TRAGEDY_OF_KING_LEAR_GONERIL": ([b"Sir, I love you more than words can wield."],
                                         [b"Dearer than eyesight!", b"Beyond what can be"]),
    "AS_YOU_LIKE_IT_ROSALIND": ([b"Nay, I", b"will not.", b"Peace!"], [b"~ out of vocabulary"]),
}  # fmt: skip


def _fedjax_bytes_column(values: list[bytes]) -> msgpack.ExtType:
    """FedJAX's array of byte strings: ext type 4, payload msgpack((shape, flat values))."""
    return msgpack.ExtType(4, msgpack.packb(((len(values),), values), use_bin_type=True))


def _write_fedjax_text(path, split: int):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, data BLOB NOT "
               "NULL, num_examples INTEGER NOT NULL)")  # fmt: skip
    for role, splits in ROLES.items():
        snippets = splits[split]
        blob = zlib.compress(msgpack.packb({"snippets": _fedjax_bytes_column(snippets)}))
        db.execute("INSERT INTO federated_data VALUES (?, ?, ?)",
                   (role.encode(), blob, len(snippets)))  # fmt: skip
    db.commit()
    db.close()


def _snippet_example(snippet: bytes) -> bytes:
    """tf.train.Example{features{feature{"snippets": Feature{bytes_list(1){value(1)}}}}}."""
    entry = _ld(1, b"snippets") + _ld(2, _ld(1, _ld(1, snippet)))
    return _ld(1, _ld(1, entry))


def _write_tff_text(path):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
               "serialized_example_proto BLOB NOT NULL)")  # fmt: skip
    db.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, "
               "num_examples INTEGER NOT NULL)")  # fmt: skip
    for split, index in (("train", 0), ("test", 1)):
        for role, splits in ROLES.items():
            db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)",
                       (role, split, len(splits[index])))  # fmt: skip
            for snippet in splits[index]:
                db.execute("INSERT INTO examples VALUES (?, ?, ?)",
                           (split, role, _snippet_example(snippet)))  # fmt: skip
    db.commit()
    db.close()


def _write_leaf_text(folder, index: int, window: int):
    """LEAF's Shakespeare: per role, every ``window``-character window of its text and the
    character after it."""
    folder.mkdir(parents=True)
    data = {}
    for role, splits in ROLES.items():
        text = " ".join(s.decode() for s in splits[index])
        xs = [text[i : i + window] for i in range(len(text) - window)]
        data[role] = {"x": xs, "y": [text[i + window] for i in range(len(text) - window)]}
    record = {"users": list(ROLES), "num_samples": [len(d["x"]) for d in data.values()],
              "user_data": data}  # fmt: skip
    (folder / "all_data_niid_0_keep_0_train_9.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def text_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("shakespeare")
    (root / "fedjax").mkdir()
    _write_fedjax_text(root / "fedjax" / "shakespeare_train.sqlite", 0)
    _write_fedjax_text(root / "fedjax" / "shakespeare_test.sqlite", 1)
    (root / "tff").mkdir()
    _write_tff_text(root / "tff" / "shakespeare.sqlite")
    _write_leaf_text(root / "leaf" / "train", 0, 8)
    _write_leaf_text(root / "leaf" / "test", 1, 8)
    return root


@pytest.mark.parametrize("fmt", ["fedjax", "tff"])
def test_shakespeare_from_snippet_files_is_each_roles_text(text_folders, fmt):
    data = datasets.load_natural("shakespeare", text_folders / fmt, 3, sequence_length=10)
    assert data.num_classes == 90 and data.train_x.shape[1:] == (10,)
    assert data.train_x.dtype == np.int32 and data.train_y.shape == data.train_x.shape
    stored = datasets.read_splits("shakespeare", text_folders / fmt)[0]  # TFF: client-id order
    order = datasets.choose_clients(stored, 3, "x").client_ids
    for k, role in enumerate(order):
        x, y = shakespeare.snippets_to_sequences(ROLES[role][0], 10)
        np.testing.assert_array_equal(data.train_x[data.train_groups[k]], x)
        np.testing.assert_array_equal(data.train_y[data.train_groups[k]], y)
        x, y = shakespeare.snippets_to_sequences(ROLES[role][1], 10)
        np.testing.assert_array_equal(data.test_y[data.test_groups[k]], y)
    assert (data.test_y == shakespeare.OOV).any()  # "~" is outside the vocabulary


def test_shakespeare_from_leaf_json_reads_windows(text_folders):
    data = datasets.load_natural("shakespeare", text_folders / "leaf", 3, sequence_length=8)
    assert data.train_x.shape[1:] == (8,)
    rows = data.train_groups[0]
    np.testing.assert_array_equal(data.train_y[rows, :-1], data.train_x[rows, 1:])
    with pytest.raises(NaturalDataError, match="give --sequence-length 8"):
        datasets.load_natural("shakespeare", text_folders / "leaf", 3, sequence_length=80)


def test_the_synthetic_roles_are_heavy_tailed_and_seeded():
    train, test = shakespeare_synthetic.generate(300, seed=0)
    lines = train.sizes + test.sizes
    assert lines.min() >= 2 and np.median(lines) < 20 < lines.max() and (test.sizes >= 1).all()
    again, _ = shakespeare_synthetic.generate(300, seed=0)
    assert again.columns["snippets"].tolist() == train.columns["snippets"].tolist()
    other, _ = shakespeare_synthetic.generate(300, seed=1)
    assert other.columns["snippets"].tolist() != train.columns["snippets"].tolist()
    text = b" ".join(train.columns["snippets"])
    assert (shakespeare.encode(text) != shakespeare.OOV).all()


# ----- metrics and losses by hand --------------------------------------------------------------
LOGITS = np.log(np.array([  # (B=2, T=3, V=4): row 0 predicts 1, 2, 3; row 1 predicts 3, 3, 1
    [[.1, .6, .2, .1], [.1, .1, .7, .1], [.1, .1, .1, .7]],
    [[.1, .1, .1, .7], [.2, .1, .1, .6], [.1, .5, .2, .2]],
], np.float32))  # fmt: skip
TARGETS = np.array([[1, 2, 2], [3, 0, 0]], np.int32)  # row 1 ends in two pad targets


def _fixed(params, x):
    return jnp.asarray(LOGITS)[x[:, 0]]  # x[:, 0] picks the row of LOGITS


def test_sequence_loss_accuracy_and_perplexity_by_hand():
    x = np.array([[0, 9, 9], [1, 9, 9]], np.int32)
    p = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
    # four non-pad targets: p(1)=.6, p(2)=.7, p(2)=.1, p(3)=.7; hits at 3 of them; EOS (2) twice
    ce = -np.log([p[0, 0, 1], p[0, 1, 2], p[0, 2, 2], p[1, 0, 3]])
    m = train.sequence_metrics(_fixed, None, jnp.asarray(x), jnp.asarray(TARGETS), batch_size=1)
    np.testing.assert_allclose(m["token_loss"], ce.mean(), rtol=ULPS)
    np.testing.assert_allclose(m["perplexity"], np.exp(ce.mean()), rtol=ULPS)
    assert float(m["acc"]) == 0.75 and float(m["acc_no_eos"]) == 1.0  # 2 of 2 non-EOS targets
    assert float(train.accuracy(_fixed, None, jnp.asarray(x), jnp.asarray(TARGETS))) == 0.75
    loss = train.batch_loss(jnp.asarray(LOGITS), jnp.asarray(TARGETS), jnp.array([True, True]))
    np.testing.assert_allclose(loss, ce.mean(), rtol=ULPS)
    only_row_1 = train.batch_loss(
        jnp.asarray(LOGITS), jnp.asarray(TARGETS), jnp.array([False, True])
    )
    np.testing.assert_allclose(only_row_1, ce[3], rtol=ULPS)
    # a client whose split is row 1 alone: one target, predicted right
    acc = train.client_accuracy(_fixed, None, jnp.asarray(x), jnp.asarray(TARGETS),
                                jnp.array([1, 0]), jnp.int32(1))  # fmt: skip
    assert float(acc) == 1.0


def test_a_clients_split_evaluated_in_batches_of_rows_gives_the_same_numbers(monkeypatch):
    """A split whose logits exceed EVAL_LOGITS is evaluated a few rows at a time: the same
    accuracy, loss and test metrics as in one batch (here one row per batch)."""
    x = jnp.array([[0, 9, 9], [1, 9, 9]], jnp.int32)
    y, idx = jnp.asarray(TARGETS), jnp.array([0, 1, 0])  # a third, padded slot
    whole = (
        train.client_accuracy(_fixed, None, x, y, idx, jnp.int32(2)),
        train.client_loss(_fixed, None, x, y, idx, jnp.int32(2)),
        train.sequence_metrics(_fixed, None, x, y)["token_loss"],
    )
    monkeypatch.setattr(train, "EVAL_LOGITS", 3 * 4)  # one row of (T=3, V=4) logits per batch
    assert train._eval_rows(_fixed, None, x) == 1
    batched = (
        train.client_accuracy(_fixed, None, x, y, idx, jnp.int32(2)),
        train.client_loss(_fixed, None, x, y, idx, jnp.int32(2)),
        train.sequence_metrics(_fixed, None, x, y)["token_loss"],
    )
    assert float(whole[0]) == float(batched[0]) == 0.75
    p = np.exp(LOGITS) / np.exp(LOGITS).sum(-1, keepdims=True)
    ce = -np.log([p[0, 0, 1], p[0, 1, 2], p[0, 2, 2], p[1, 0, 3]]).mean()
    for value in (*whole[1:], *batched[1:]):
        np.testing.assert_allclose(value, ce, rtol=ULPS)


def test_the_lstm_layer_is_its_equations_step_by_step():
    from jaxfl.models.recurrent import LSTM

    layer = LSTM(5)
    x = jax.random.normal(jax.random.key(1), (2, 4, 3))
    params = layer.init(jax.random.key(0), x)["params"]
    out = np.asarray(layer.apply({"params": params}, x))
    w, u, b = (np.asarray(params[k], np.float64) for k in ("kernel", "recurrent_kernel", "bias"))
    assert (b[5:10] == 1).all() and (b[:5] == 0).all()  # forget gate bias 1
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h = c = np.zeros((2, 5))
    for t in range(4):
        z = np.asarray(x[:, t], np.float64) @ w + h @ u + b
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        # tol: float32 matmuls of width <= 5 against float64.
        np.testing.assert_allclose(out[:, t], h, rtol=1e-5, atol=1e-6)


# ----- the round, vmapped against the loop; the command line ----------------------------------
def test_the_transformer_is_causal():
    from jaxfl.models import get_model

    model = get_model("transformer-S", (20,), 90)
    params = model.init(jax.random.key(0))
    x = jnp.arange(40).reshape(2, 20) % 90
    before, after = model.apply(params, x), model.apply(params, x.at[:, 12].set(7))
    np.testing.assert_array_equal(before[:, :12], after[:, :12])  # position t reads 0..t only
    assert not np.allclose(before[:, 12:], after[:, 12:])


@pytest.mark.parametrize("model_name", ["charlstm-8", "transformer-S"])
def test_a_language_round_equals_the_per_client_loop(model_name):
    from jaxfl.algorithms import fedavg
    from jaxfl.data import FederationSpec, build_federation, load_dataset
    from jaxfl.models import get_model

    ds = load_dataset("shakespeare_synthetic", None, num_clients=40, sequence_length=20)
    data, _ = build_federation(ds, FederationSpec(num_clients=40, partition="natural",
                                                  public_size=0))  # fmt: skip
    model = get_model(model_name, data.feature_shape, data.num_classes)
    config = fedavg.FedAvgConfig(clients_per_round=6, batch_size=4, lr=0.5, client_chunk=3)
    algo = fedavg.make(config, data, model)
    state_v = state_l = algo.init(jax.random.key(0))
    for r in range(2):
        key = jax.random.key(10 + r)
        state_v, metrics_v = algo.round(state_v, key)
        state_l, metrics_l = algo.round_loop(state_l, key)
        assert_trees_close(state_v, state_l)
        assert_trees_close(metrics_v, metrics_l)
    evaluated = algo.evaluate(state_v)
    assert {"test_acc", "test_acc_no_eos", "test_perplexity"} <= set(evaluated)


def test_a_run_prints_the_language_metrics(tmp_path, capsys):
    from jaxfl.cli import run

    argv = ["--algo", "fedavg", "--dataset", "shakespeare_synthetic", "--clients", "30",
            "--clients-per-round", "5", "--rounds", "2", "--model", "charlstm-8",
            "--sequence-length", "20", "--batch-size", "4", "--devices", "1",
            "--out", str(tmp_path / "r")]  # fmt: skip
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    assert "next-token accuracy" in out and "chance 1/90 = 0.011; always the most frequent" in out
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    perplexity = [r["test_perplexity"] for r in lines if "test_perplexity" in r]
    assert len(perplexity) == 2 and perplexity[-1] < 90  # below a uniform guess's


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--algo", "dsfl"], "--algo 'dsfl' is not allowed; allowed: fedavg,"),
        (["--algo", "moon"], "moon's losses are per example and class"),
        (
            ["--algo", "fedavg", "--model", "cnn"],
            "--model 'cnn' is not allowed; allowed: charlstm, nwp-lstm, transformer-S or "
            "charlstm-H",
        ),
        (
            ["--algo", "fedavg", "--attack", "label_flip"],
            "label flipping permutes classes, not tokens",
        ),
        (
            ["--algo", "fedavg", "--partition", "dirichlet"],
            "natural with --dataset shakespeare_synthetic",
        ),
    ],
)
def test_what_the_language_tasks_do_not_take_is_refused(argv, message):
    from jaxfl.cli import flags
    from jaxfl.core.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        flags.validate(flags.parse(["--dataset", "shakespeare_synthetic", *argv]))


def test_sequence_flags_and_models_are_refused_elsewhere():
    from jaxfl.cli import flags
    from jaxfl.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--sequence-length 20 is not allowed; allowed: only"):
        flags.validate(flags.parse(["--dataset", "blobs", "--sequence-length", "20"]))
    with pytest.raises(ConfigError, match="--model 'charlstm' is not allowed"):
        flags.validate(flags.parse(["--dataset", "blobs", "--model", "charlstm"]))


def test_the_host_placement_gives_the_device_placements_numbers(tmp_path):
    from jaxfl.cli import run

    argv = ["--algo", "fedavg", "--dataset", "shakespeare_synthetic", "--clients", "30",
            "--clients-per-round", "5", "--rounds", "2", "--model", "charlstm-8",
            "--sequence-length", "20", "--batch-size", "4", "--devices", "1"]  # fmt: skip
    for placement in ("device", "host"):
        out = str(tmp_path / placement)
        assert run.main([*argv, "--data-placement", placement, "--out", out]) == 0
    lines = {
        p: [json.loads(x) for x in (tmp_path / p / "metrics.jsonl").read_text().splitlines()]
        for p in ("device", "host")
    }
    for device, host in zip(lines["device"], lines["host"], strict=True):
        for key in ("test_acc", "test_perplexity", "train_loss", "client_acc_mean"):
            assert device[key] == host[key], key


@pytest.mark.slow
@pytest.mark.parametrize("algo", [a for a in with_capability("sequences") if a != "fedavg"])
def test_every_algorithm_for_language_runs_from_the_command_line(algo, tmp_path):
    """On the default devices (one per core), one round of each algorithm the language tasks
    take; the reports of a global model's name the language metrics."""
    from jaxfl.cli import run

    argv = ["--algo", algo, "--dataset", "shakespeare_synthetic", "--clients", "20",
            "--clients-per-round", "4", "--rounds", "1", "--model", "charlstm-8",
            "--sequence-length", "10", "--batch-size", "4"]  # fmt: skip
    assert run.main([*argv, "--out", str(tmp_path / "r")]) == 0
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= record.get("test_acc", record.get("client_acc_mean")) <= 1


def test_the_round_estimate_counts_every_time_step():
    """XLA's cost analysis counts a scan's body once; the LSTM's FLOPs are counted by hand:
    per token and layer 8H(D + H), 2HV for the output, x3 for the backward pass."""
    from jaxfl.experiments.flops import _step_flops
    from jaxfl.models import get_model

    model = get_model("charlstm", (80,), 90)
    per_token = 8 * 256 * (8 + 256) + 8 * 256 * (256 + 256) + 2 * 256 * 90
    assert _step_flops(model, 4) == 3 * per_token * 4 * 80
