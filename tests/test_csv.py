"""CSV datasets (cupyvae.csvdata): header or none, a label column by name, clear errors
naming the line and column of a bad cell, and training from a CSV reference."""
import json

import numpy as np
import pytest

from cupyvae import runs
from cupyvae.csvdata import parse_csv_reference
from cupyvae.datasets import DatasetError, load_dataset
from cupyvae.training import TrainingOptions


def write(tmp_path, text: str, name: str = "table.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def table(rows: int, with_header: bool = True, label: str | None = "kind") -> str:
    rng = np.random.default_rng(0)
    lines = ["a,b,kind,c" if with_header else None]
    for k in range(rows):
        a, b, c = rng.random(3)
        lines.append(f"{a:.6f},{b:.6f},{['cat', 'dog'][k % 2] if label else k % 3},{c:.6f}")
    return "\n".join(line for line in lines if line is not None) + "\n"


def test_header_and_text_labels_by_name(tmp_path):
    path = write(tmp_path, table(20))
    data = load_dataset(f"{path}#label=kind")
    assert data.x_train.shape == (18, 3) and data.x_test.shape == (2, 3)     # last 10%: test
    assert data.x_train.dtype == np.float32
    assert data.label_names == ("cat", "dog")
    assert data.y_train.tolist()[:4] == [0, 1, 0, 1]
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    np.testing.assert_array_equal(data.x_train[0], np.float32([rows[0][0], rows[0][1], rows[0][3]]))


def test_without_a_label_every_column_is_a_feature(tmp_path):
    path = write(tmp_path, "x,y\n0.5,0.25\n1,0\n")
    data = load_dataset(str(path))
    assert data.y_train is None and data.x_train.tolist() == [[0.5, 0.25], [1.0, 0.0]]
    assert len(data.x_test) == 0                       # fewer than 10 rows: no test split


def test_no_header_columns_are_numbered_and_integer_labels_stay_integers(tmp_path):
    path = write(tmp_path, "0.1,0.2,3\n0.3,0.4,7\n\n0.5,0.6,3\n")      # a blank line is skipped
    data = load_dataset(f"{path}#label=3")
    np.testing.assert_array_equal(data.x_train, np.float32([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]))
    assert data.y_train.tolist() == [3, 7, 3] and getattr(data, "label_names", None) is None


def test_quotes_bom_and_spaces_are_read(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes('\ufeff"p", "q"\n"0.5", 0.75 \n'.encode("utf-8"))
    assert load_dataset(str(path)).x_train.tolist() == [[0.5, 0.75]]


@pytest.mark.parametrize("text,named", [
    ("a,b\n0.1,0.2\n0.3,oops\n", r"line 3, column 'b' \(column 2\): 'oops' is not a number"),
    ("a,b\n0.1,\n", r"line 2, column 'b' \(column 2\): the cell is empty"),
    ("a,b\n0.1,nan\n", r"line 2, column 'b' \(column 2\): 'nan' is not a finite number"),
    ("a,b\n0.1,0.2\n0.1,inf\n", r"line 3, column 'b'.*'inf' is not a finite number"),
    ("a,b\n0.1,0.2\n0.3\n", r"line 3 has 1 cells, but the header has 2"),
    ("1,2\n3,x\n", r"line 2, column '2' \(column 2\): 'x' is not a number"),
    ("a,b\n", "no data rows below the header"),
    ("", "the file is empty"),
    ("a,a\n1,2\n", r"names the columns \['a'\] more than once"),
])
def test_bad_cells_are_named_by_line_and_column(tmp_path, text, named):
    path = write(tmp_path, text)
    with pytest.raises(DatasetError, match=named) as error:
        load_dataset(str(path))
    assert str(path) in str(error.value)


def test_label_problems_are_named(tmp_path):
    path = write(tmp_path, table(5))
    with pytest.raises(DatasetError, match=r"no column 'species' for the labels; the header's columns are a, b, kind, c"):
        load_dataset(f"{path}#label=species")
    with pytest.raises(DatasetError, match="the only option is label=COLUMN"):
        load_dataset(f"{path}#labels=kind")
    empty_label = write(tmp_path, "a,kind\n0.1,cat\n0.2,\n", "e.csv")
    with pytest.raises(DatasetError, match=r"line 3, label column 'kind': the cell is empty"):
        load_dataset(f"{empty_label}#label=kind")
    only_label = write(tmp_path, "kind\ncat\n", "o.csv")
    with pytest.raises(DatasetError, match="no feature columns"):
        load_dataset(f"{only_label}#label=kind")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(str(tmp_path / "missing.csv"))


def test_a_text_column_that_is_not_declared_hints_at_the_label_syntax(tmp_path):
    path = write(tmp_path, table(5))
    with pytest.raises(DatasetError, match=r"line 2, column 'kind' \(column 3\): 'cat' is not a "
                                           r"number; every cell of column 'kind' is text: if it "
                                           r"holds the labels, name it with table.csv#label=kind"):
        load_dataset(str(path))
    mixed = write(tmp_path, "a,b\n0.1,0.2\n0.3,oops\n", "m.csv")      # one bad cell: a typo, not labels
    with pytest.raises(DatasetError) as error:
        load_dataset(str(mixed))
    assert "#label=" not in str(error.value)


def test_a_misspelled_label_column_gets_a_suggestion(tmp_path):
    path = write(tmp_path, table(5))
    with pytest.raises(DatasetError, match=r"no column 'knd' for the labels \(did you mean 'kind'\?\)"):
        load_dataset(f"{path}#label=knd")


def test_the_reference_parses_and_keeps_its_options():
    path, options = parse_csv_reference("~/data/t.csv#label=kind")
    assert path.name == "t.csv" and options == {"label": "kind"}


def test_a_run_trains_on_a_csv_and_records_the_reference(tmp_path):
    path = write(tmp_path, table(60))
    run = runs.start_run(tmp_path / "run", {"hidden": (8,), "latent_dim": 2},
                         TrainingOptions(epochs=1, batch_size=9),
                         runs.RunOptions(data=f"{path}#label=kind", device="cpu"))
    run.train(runs.Reporter())
    config = json.loads((run.folder / runs.CONFIG_FILE).read_text())
    assert config["run"]["data"] == f"{path.resolve()}#label=kind"
    assert config["dataset"]["train_examples"] == 54
    summary = runs.encode_run(run.folder, tmp_path / "codes.csv", device="cpu")
    lines = (tmp_path / "codes.csv").read_text().splitlines()
    assert lines[0] == "z1,z2,label,label_name" and summary["examples"] == 60
    assert lines[1].endswith(",0,cat") and lines[2].endswith(",1,dog")


def test_relative_csv_references_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, table(3))
    assert runs.dataset_reference("table.csv#label=kind") == f"{tmp_path / 'table.csv'}#label=kind"
    assert runs.default_run_folder("table.csv#label=kind").name.startswith("table-")
