"""Natural federations: each published format read from a tiny file written here in that exact
format (independently of jaxfl's own writers where it matters), the data sets by name, the
client choice and filters, LEAF's synthetic generator, the errors, and a run that learns."""

import json
import sqlite3
import struct
import zlib

import msgpack
import numpy as np
import pytest

from jaxfl.data.natural import (
    datasets,
    fedjax_sqlite,
    leaf_json,
    leaf_synthetic,
    tf_example,
    tff_sqlite,
)
from jaxfl.data.natural.store import ClientColumns, NaturalDataError, size_summary

from .tolerance import ULPS

WRITERS = ["f0001_07", "f0002_12", "f0003_31", "f0004_40", "f0005_02", "f0006_19"]


def _writer_data(seed=0):
    """Six writers with 2..7 train and 1..2 test images: pixels in [0, 1], white (1) background."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for k, w in enumerate(WRITERS):
        for split, n in ((train, 2 + k), (test, 1 + k % 2)):
            split[w] = {
                "pixels": rng.uniform(0, 1, (n, 28, 28)).astype(np.float32),
                "label": rng.integers(0, 62, n).astype(np.int32),
            }
    return train, test


# ----- FedJAX's SQLite, written with msgpack by the format's description -----------------------
def _fedjax_array(a: np.ndarray) -> msgpack.ExtType:
    return msgpack.ExtType(
        1, msgpack.packb((a.shape, a.dtype.name, a.tobytes()), use_bin_type=True)
    )


def _write_fedjax(path, clients):
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE federated_data (client_id BLOB NOT NULL PRIMARY KEY, data BLOB NOT NULL, "
        "num_examples INTEGER NOT NULL)"
    )
    for cid, cols in clients.items():
        blob = zlib.compress(msgpack.packb({k: _fedjax_array(v) for k, v in cols.items()}))
        db.execute("INSERT INTO federated_data VALUES (?, ?, ?)",
                   (cid.encode(), blob, len(cols["label"])))  # fmt: skip
    db.commit()
    db.close()


def test_fedjax_sqlite_reads_the_published_layout_and_writes_it_back(tmp_path):
    train, _ = _writer_data()
    _write_fedjax(tmp_path / "a.sqlite", train)
    store = fedjax_sqlite.read(tmp_path / "a.sqlite")
    assert store.client_ids == WRITERS  # rowid order
    for k, w in enumerate(WRITERS):
        np.testing.assert_array_equal(store.client(k)["pixels"], train[w]["pixels"])
        np.testing.assert_array_equal(store.client(k)["label"], train[w]["label"])
    fedjax_sqlite.write(tmp_path / "b.sqlite", store)
    again = fedjax_sqlite.read(tmp_path / "b.sqlite")
    assert again.client_ids == store.client_ids
    for name in store.columns:
        np.testing.assert_array_equal(again.columns[name], store.columns[name])


# ----- TFF's SQLite: tf.train.Example bytes ----------------------------------------------------
def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _ld(field: int, payload: bytes) -> bytes:  # a length-delimited field
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _hand_example(pixels: np.ndarray, label: int) -> bytes:
    """A tf.train.Example by the wire format alone: Example.features(1) -> Features.feature(1)
    map entries {key(1), value(2): Feature{float_list(2) | int64_list(3) {value(1), packed}}}."""
    floats = _ld(2, _ld(1, struct.pack(f"<{pixels.size}f", *pixels.ravel())))
    ints = _ld(3, _ld(1, _varint(label)))
    entries = _ld(1, _ld(1, b"pixels") + _ld(2, floats)) + _ld(1, _ld(1, b"label") + _ld(2, ints))
    return _ld(1, entries)


def test_tf_example_decodes_bytes_made_by_the_wire_format_alone():
    pixels = np.linspace(0, 1, 6, dtype=np.float32)
    decoded = tf_example.decode(_hand_example(pixels, 41))
    np.testing.assert_array_equal(decoded["pixels"], pixels)
    np.testing.assert_array_equal(decoded["label"], [41])
    again = tf_example.decode(tf_example.encode({"tokens": b"a b c", "score": np.array([3])}))
    assert again["tokens"] == [b"a b c"] and again["score"].tolist() == [3]


def _write_tff(path, splits):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL, "
               "serialized_example_proto BLOB NOT NULL)")  # fmt: skip
    db.execute("CREATE TABLE client_metadata (client_id TEXT NOT NULL, split_name TEXT NOT NULL, "
               "num_examples INTEGER NOT NULL)")  # fmt: skip
    for split, clients in splits.items():
        for cid in reversed(list(clients)):  # TFF reads in client_id order, whatever the rows'
            cols = clients[cid]
            db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)",
                       (cid, split, len(cols["label"])))  # fmt: skip
            for pixels, label in zip(cols["pixels"], cols["label"], strict=True):
                db.execute("INSERT INTO examples VALUES (?, ?, ?)",
                           (split, cid, _hand_example(pixels, int(label))))  # fmt: skip
    db.commit()
    db.close()


def test_tff_sqlite_reads_each_split_in_client_id_order(tmp_path):
    train, test = _writer_data()
    _write_tff(tmp_path / "emnist_all.sqlite", {"train": train, "test": test})
    assert sorted(tff_sqlite.splits(tmp_path / "emnist_all.sqlite")) == ["test", "train"]
    store = tff_sqlite.read(tmp_path / "emnist_all.sqlite", "train", ("pixels", "label"),
                            {"pixels": (28, 28)})  # fmt: skip
    assert store.client_ids == sorted(WRITERS)
    for k, w in enumerate(store.client_ids):
        np.testing.assert_array_equal(store.client(k)["pixels"], train[w]["pixels"])
        np.testing.assert_array_equal(store.client(k)["label"], train[w]["label"])


# ----- LEAF's JSON -----------------------------------------------------------------------------
def _write_leaf(folder, clients, per_file=4):
    folder.mkdir(parents=True)
    ids = list(clients)
    for f, start in enumerate(range(0, len(ids), per_file)):
        users = ids[start : start + per_file]
        record = {
            "users": users,
            "num_samples": [len(clients[u]["label"]) for u in users],
            "user_data": {
                u: {"x": clients[u]["pixels"].reshape(-1, 784).tolist(),
                    "y": clients[u]["label"].tolist()}
                for u in users
            },
        }  # fmt: skip
        (folder / f"all_data_{f}_niid_0_keep_0_train_9.json").write_text(json.dumps(record))


def test_leaf_json_reads_a_folder_of_files_in_order(tmp_path):
    train, _ = _writer_data()
    _write_leaf(tmp_path / "train", train)
    store = leaf_json.read(tmp_path / "train")
    assert store.client_ids == WRITERS
    np.testing.assert_allclose(store.client(2)["x"], train[WRITERS[2]]["pixels"].reshape(-1, 784))


# ----- the data sets by name -------------------------------------------------------------------
@pytest.fixture(scope="module")
def emnist_folders(tmp_path_factory):
    train, test = _writer_data()
    root = tmp_path_factory.mktemp("emnist")
    (root / "fedjax").mkdir()
    _write_fedjax(root / "fedjax" / "federated_emnist_train.sqlite", train)
    _write_fedjax(root / "fedjax" / "federated_emnist_test.sqlite", test)
    (root / "tff").mkdir()
    _write_tff(root / "tff" / "emnist_all.sqlite", {"train": train, "test": test})
    _write_leaf(root / "leaf" / "train", train)
    _write_leaf(root / "leaf" / "test", test)
    return root, train, test


@pytest.mark.parametrize("fmt", ["fedjax", "tff", "leaf"])
def test_emnist62_federated_is_the_same_from_every_format(emnist_folders, fmt):
    root, train, test = emnist_folders
    assert datasets.find_files("emnist62_federated", root / fmt)[0] == fmt
    data = datasets.load_natural("emnist62_federated", root / fmt, 4)
    reference = datasets.load_natural("emnist62_federated", root / "fedjax", 4)
    assert data.train_x.shape[1:] == (28, 28, 1) and data.num_classes == 62
    # tol: two formats decoding the same stored pixels; one format stores 1 - p, whose float32
    # rounding is at most 2^-24 = 6e-8.
    np.testing.assert_allclose(data.train_x, reference.train_x, atol=1e-7)
    np.testing.assert_array_equal(data.train_y, reference.train_y)
    # tol: as above: one float32 rounding of 1 - p.
    np.testing.assert_allclose(data.test_x, reference.test_x, atol=1e-7)
    # the chosen writers, their own train and test examples, ink 1 on a 0 background
    chosen = datasets.choose_clients(fedjax_sqlite.read(
        root / "fedjax" / "federated_emnist_train.sqlite"), 4, "x").client_ids  # fmt: skip
    for k, w in enumerate(chosen):
        rows = data.train_groups[k]
        # tol: as above: one float32 rounding of 1 - p.
        np.testing.assert_allclose(data.train_x[rows, ..., 0], 1 - train[w]["pixels"], atol=1e-7)
        np.testing.assert_array_equal(data.test_y[data.test_groups[k]], test[w]["label"])


def test_the_client_order_is_fixed_and_the_filters_apply(emnist_folders):
    root, train, _ = emnist_folders
    store = fedjax_sqlite.read(root / "fedjax" / "federated_emnist_train.sqlite")
    first = datasets.choose_clients(store, 3, "x").client_ids
    assert datasets.choose_clients(store, 5, "x").client_ids[:3] == first  # a prefix
    big = datasets.choose_clients(store, 2, "x", min_examples=6)
    assert set(big.client_ids) == {w for w in WRITERS if len(train[w]["label"]) >= 6}
    capped = datasets.choose_clients(store, 6, "x", max_examples=3)
    assert capped.sizes.max() == 3
    k = capped.client_ids.index("f0006_19")  # its first 3 examples, in file order
    np.testing.assert_array_equal(capped.client(k)["label"], train["f0006_19"]["label"][:3])
    with pytest.raises(NaturalDataError, match="--clients 7 is more than"):
        datasets.choose_clients(store, 7, "emnist62_federated")
    with pytest.raises(NaturalDataError, match="no client has --min-client-examples 99"):
        datasets.choose_clients(store, 1, "emnist62_federated", min_examples=99)


def test_cifar100_federated_from_tff_has_its_own_test_clients(tmp_path):
    rng = np.random.default_rng(1)

    def clients(n_clients, n):
        return {f"{c}": {"image": rng.integers(0, 256, (n, 32, 32, 3)),
                         "label": rng.integers(0, 100, n)} for c in range(n_clients)}  # fmt: skip

    train, test = clients(5, 4), clients(2, 3)
    stores = {s: ClientColumns.from_clients(list(c), list(c.values()))
              for s, c in (("train", train), ("test", test))}  # fmt: skip
    tff_sqlite.write(tmp_path / "cifar100.sqlite", stores)
    data = datasets.load_natural("cifar100_federated", tmp_path, 3)
    assert data.train_x.shape == (12, 32, 32, 3) and data.test_x.shape == (6, 32, 32, 3)
    assert data.test_groups is None  # Pachinko's test clients are not the train clients
    from jaxfl.data.pixels import scale_images

    expected = scale_images(np.concatenate([test["0"]["image"], test["1"]["image"]])
                             .astype(np.uint8), "cifar100")  # fmt: skip
    np.testing.assert_allclose(data.test_x, expected, rtol=ULPS)


# ----- bad input: one line naming the file and what to do --------------------------------------
def test_missing_and_wrong_files_are_named(tmp_path):
    with pytest.raises(NaturalDataError, match=r"holds none of its files.*federated_emnist_train"):
        datasets.find_files("emnist62_federated", tmp_path)
    (tmp_path / "x.sqlite").write_bytes(b"not a database at all" * 10)
    with pytest.raises(NaturalDataError, match="not a FedJAX SQLite file"):
        fedjax_sqlite.read(tmp_path / "x.sqlite")
    (tmp_path / "bad.json").write_text('{"users": ["a"]}')
    with pytest.raises(NaturalDataError, match="not LEAF's format"):
        leaf_json.read(tmp_path / "bad.json")
    train, _ = _writer_data()
    _write_fedjax(tmp_path / "c.sqlite", train)
    db = sqlite3.connect(tmp_path / "c.sqlite")
    db.execute("UPDATE federated_data SET data = ? WHERE rowid = 2", (b"truncated",))
    db.commit()
    db.close()
    with pytest.raises(NaturalDataError, match="'f0002_12''s data is corrupt"):
        fedjax_sqlite.read(tmp_path / "c.sqlite")
    _write_tff(tmp_path / "t.sqlite", {"train": train})
    db = sqlite3.connect(tmp_path / "t.sqlite")
    db.execute("DELETE FROM examples WHERE rowid = 1")
    db.commit()
    db.close()
    with pytest.raises(NaturalDataError, match="the file is incomplete or corrupt"):
        tff_sqlite.read(tmp_path / "t.sqlite", "train", ("pixels", "label"))


# ----- LEAF's synthetic federation -------------------------------------------------------------
def test_leaf_synthetic_sizes_split_and_labels():
    sizes = leaf_synthetic.client_sizes(20000, np.random.default_rng(3))
    assert sizes.min() >= 5 and sizes.max() == 1000  # +5, capped
    # floor(lognormal(3, 2)) + 5: the median is about e^3 + 5 = 25
    assert 22 <= np.median(sizes) <= 28
    data = leaf_synthetic.generate(200, seed=1)
    totals = [len(a) + len(b) for a, b in zip(data.train_groups, data.test_groups, strict=True)]
    for n, train in zip(totals, data.train_groups, strict=True):
        assert len(train) == max(1, int(0.9 * n))
    assert data.train_x.shape[1] == 60 and set(np.unique(data.train_y)) <= set(range(5))
    again = leaf_synthetic.generate(200, seed=1)
    np.testing.assert_array_equal(again.train_x, data.train_x)
    summary = size_summary(np.array([len(g) for g in data.train_groups]))
    assert summary["max"] > 20 * summary["median"]  # heavy-tailed


def test_a_run_on_leaf_synthetic_learns_and_prints_the_client_sizes(tmp_path, capsys):
    from jaxfl.cli import run

    argv = ["--algo", "fedavg", "--dataset", "leaf_synthetic", "--clients", "200",
            "--clients-per-round", "50", "--rounds", "3", "--model", "mlp-32", "--devices", "1",
            "--batch-size", "10", "--out", str(tmp_path / "r")]  # fmt: skip
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    assert "client sizes: " in out and "padding efficiency" in out
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    runs = config["client_chunk_schedule"]  # (width, count) runs covering the cohort
    assert sum(w * n for w, n in runs) == 50 and runs[-1][0] < runs[0][0]
    assert "chunks narrowing as sizes grow (width x count): " in out
    assert config["padding_efficiency"] >= 0.9  # batch 10 (FedProx's): little rounding
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    accs = [r["test_acc"] for r in lines if "test_acc" in r]
    assert accs[-1] > 0.35 > 0.2  # chance is 0.2 (5 classes)


def test_a_run_on_a_fixture_emnist62_federation(emnist_folders, tmp_path):
    from jaxfl.cli import run

    root, _, _ = emnist_folders
    argv = ["--algo", "fedavg", "--dataset", "emnist62_federated", "--data-dir",
            str(root / "tff"), "--clients", "6", "--rounds", "1", "--model", "mlp-16",
            "--devices", "1", "--out", str(tmp_path / "r")]  # fmt: skip
    assert run.main(argv) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["data"]["num_clients"] == 6 and config["data"]["partition"] == "natural"


def test_natural_only_flags_and_missing_files_fail_before_any_work(tmp_path):
    from jaxfl.cli import flags
    from jaxfl.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-client-examples 5 is not allowed; allowed: only"):
        flags.validate(flags.parse(["--dataset", "blobs", "--max-client-examples", "5"]))
    with pytest.raises(NaturalDataError, match="holds none of its files"):
        flags.validate(flags.parse(["--dataset", "emnist62_federated",
                                    "--data-dir", str(tmp_path)]))  # fmt: skip


def test_a_round_in_a_schedule_of_mixed_chunk_widths_equals_the_per_client_loop():
    """Heavy-tailed clients: the round vmaps the sorted cohort in chunks of several widths
    (the schedule), the loop reference trains each client alone; both rounds agree."""
    import jax

    from jaxfl.algorithms import fedavg
    from jaxfl.data import FederationSpec, build_federation, load_dataset
    from jaxfl.models import get_model

    from .tolerance import assert_trees_close

    ds = load_dataset("leaf_synthetic", None, seed=0, num_clients=200)
    data, _ = build_federation(ds, FederationSpec(num_clients=200, partition="natural"))
    model = get_model("mlp-32", data.feature_shape, data.num_classes)
    config = fedavg.FedAvgConfig(clients_per_round=20, batch_size=10, lr=0.05, client_chunk=8)
    algo = fedavg.make(config, data, model)
    assert algo.cohort_by_size and len({w for w, _ in algo.client_chunk}) >= 2, algo.client_chunk
    state_v = state_l = algo.init(jax.random.key(0))
    for r in range(2):
        key = jax.random.key(10 + r)
        state_v, metrics_v = algo.round(state_v, key)
        state_l, metrics_l = algo.round_loop(state_l, key)
        assert_trees_close(state_v, state_l)
        assert_trees_close(metrics_v, metrics_l)
