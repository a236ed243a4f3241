"""Datasets from CSV files (headers told from data, byte-order marks, target columns and cells),
prediction inputs matched to the model's features by name, and plots without matplotlib."""

from __future__ import annotations

import csv
import errno
import json
import re
import sys
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainwire.client import Client, Prediction
from trainwire.client.files import (
    read_csv,
    read_dataset,
    read_model_inputs,
    replaced_file,
    write_prediction,
)
from trainwire.client.results import TASKS


def write(tmp_path: Path, text: str, name: str = "data.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_a_headerless_file_with_word_labels_keeps_its_first_row(tmp_path: Path) -> None:
    table = read_csv(write(tmp_path, "5.1,3.5,setosa\n6.2,2.9,versicolor\n7.7,3.0,virginica\n"))
    assert table.features.shape == (3, 2) and table.feature_names == []
    assert table.class_names == ["setosa", "versicolor", "virginica"]
    assert table.targets is not None and table.targets.tolist() == [0, 1, 2]


def test_a_header_is_still_told_from_numbers_below_it(tmp_path: Path) -> None:
    table = read_csv(write(tmp_path, "length,width,species\n5.1,3.5,setosa\n6.2,2.9,versicolor\n"))
    assert table.feature_names == ["length", "width"] and table.features.shape == (2, 2)


def test_word_labels_from_a_targets_file_keep_their_first_row(tmp_path: Path) -> None:
    features = tmp_path / "x.npy"
    np.save(features, np.zeros((3, 2), np.float32))
    labels = write(tmp_path, "setosa\nversicolor\nvirginica\n", "y.csv")
    table = read_dataset(features, labels)
    assert table.class_names == ["setosa", "versicolor", "virginica"]


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path: Path) -> None:
    with_header = write(tmp_path, "species,a\nx,1\ny,2\n", encoding="utf-8-sig")
    assert read_csv(with_header, "species").class_names == ["x", "y"]
    without = write(tmp_path, "1,2,0\n3,4,1\n", "plain.csv", encoding="utf-8-sig")
    assert read_csv(without).features.shape == (2, 2), "the first row is data"


@pytest.mark.parametrize("column", [3, 9, -4, "7"])
def test_a_target_column_past_the_last_is_refused(tmp_path: Path, column: int | str) -> None:
    with pytest.raises(ValueError, match="has 3 columns"):
        read_csv(write(tmp_path, "1,2,0\n3,4,1\n"), column)


def test_a_missing_target_is_refused_naming_its_row(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="row 3 has no target"):
        read_csv(write(tmp_path, "a,b,label\n1,2,0\n3,4,\n5,6,1\n"))
    with pytest.raises(ValueError, match="row 4 has no target"):  # the file's line, blank or not
        read_csv(write(tmp_path, "a,b,label\n\n1,2,0\n3,4,\n"))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # The line is the file's: the blank line counts.
        ("a,b,label\n1,2,0\n\n3,x,1\n", "data.csv:4: feature column 'b' holds 'x'"),
        ("1,2,0\n3,x,1\n", "data.csv:2: feature column 1 (counting from 0) holds 'x'"),
        ("a,b,label\n1,2,0\n3, ,1\n", "data.csv:3: feature column 'b' is empty"),
    ],
)
def test_a_feature_cell_that_is_no_number_is_refused_naming_its_line_and_column(
    tmp_path: Path, text: str, where: str
) -> None:
    message = f"{where}; every feature column must be numeric"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        read_csv(write(tmp_path, text))


def test_an_input_cell_that_is_no_number_is_refused_naming_its_line_and_column(
    tmp_path: Path,
) -> None:
    """Named by the file's header, which the model's features put in another order."""
    path = write(tmp_path, "c,a,b\n3,1,2\n6,four,5\n")
    with pytest.raises(ValueError, match=r"data.csv:3: feature column 'a' holds 'four'; every"):
        read_model_inputs(path, lambda: ["a", "b", "c"])


def test_underscored_digits_are_no_integer_label(tmp_path: Path) -> None:
    table = read_csv(write(tmp_path, "1,2,2\n3,4,1_0\n"))
    assert table.class_names == ["1_0", "2"], "words, not the integers 10 and 2"


def test_saving_a_plot_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainwire.client.plot import save_metrics_plot

    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    metrics = {"loss": np.array([[1.0, 1.0, 0.5]])}
    with pytest.raises(ImportError, match=r"pip install 'trainwire\[plot\]'") as refused:
        save_metrics_plot(metrics, tmp_path / "curves.png")
    # The form that works in a checkout, where `make demo`/`make serve` leave the extra out.
    assert ".venv/bin/pip install -e '.[plot]'" in str(refused.value)


def test_named_input_columns_are_put_in_the_models_order(tmp_path: Path) -> None:
    path = write(tmp_path, "c,a,b\n3,1,2\n6,4,5\n")
    reordered = read_model_inputs(path, lambda: ["a", "b", "c"])
    assert reordered.tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a,b,label\n1,2,0\n", "missing: c; not features of the model: label"),
        # Refused by name, not as a non-numeric feature: the target column left in the file.
        ("a,b,c,species\n1,2,3,setosa\n", "not features of the model: species"),
        ("a,b,b,c\n1,2,2,3\n", "named twice: b"),
    ],
)
def test_input_columns_that_do_not_name_the_models_features_are_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(
        ValueError, match=f"do not match the model's features \\(a, b, c\\); {problem}$"
    ):
        read_model_inputs(path, lambda: ["a", "b", "c"])


def test_unnamed_columns_or_features_are_taken_by_position(tmp_path: Path) -> None:
    def no_names_needed() -> list[str]:
        raise AssertionError("a file without a header needs no model metadata")

    headerless = write(tmp_path, "3,1,2\n")
    assert read_model_inputs(headerless, no_names_needed).tolist() == [[3, 1, 2]]
    named = write(tmp_path, "c,a,b\n3,1,2\n", name="named.csv")
    assert read_model_inputs(named, lambda: []).tolist() == [[3, 1, 2]]
    np.save(tmp_path / "rows.npy", np.array([[3.0, 1.0, 2.0]]))
    assert read_model_inputs(tmp_path / "rows.npy", no_names_needed).tolist() == [[3, 1, 2]]


def test_a_features_file_keeps_its_column_names_beside_a_targets_file(tmp_path: Path) -> None:
    features = write(tmp_path, "a,b\n1,2\n3,4\n", name="x.csv")
    np.save(tmp_path / "y.npy", np.array([0, 1]))
    assert read_dataset(features, tmp_path / "y.npy").feature_names == ["a", "b"]


def test_a_dataset_file_of_another_kind_is_refused_naming_the_argument_and_every_kind(
    tmp_path: Path,
) -> None:
    """It was refused as prediction inputs are ("inputs must be a .csv or .npy file"), though
    the argument is `features` and .npz files are taken too."""
    log = write(tmp_path, "started\n", name="server3.log")
    message = "features must be a .csv file (targets in a column, or given), an .npz file"
    with pytest.raises(ValueError, match=re.escape(message) + r".*Received: .*server3\.log$"):
        read_dataset(log)
    with pytest.raises(ValueError, match=r"^inputs must be a \.csv or \.npy file"):
        read_model_inputs(log, lambda: [])


def test_a_target_column_that_would_be_ignored_is_refused(tmp_path: Path) -> None:
    """With targets given, or features that are no CSV file or an array, target_column was
    ignored without a word: the upload's targets were not the column asked for."""
    features = write(tmp_path, "a,b,label\n1,2,0\n3,4,1\n")
    np.save(tmp_path / "y.npy", np.array([1, 0]))
    np.save(tmp_path / "x.npy", np.ones((2, 2)))
    for arguments, given in (
        ((features, np.array([1, 0])), "targets were given too"),
        ((features, tmp_path / "y.npy"), "targets were given too"),
        ((tmp_path / "x.npy",), "x.npy is no CSV file"),
    ):
        with pytest.raises(ValueError, match=f"but .*{given}: give one or the other"):
            read_dataset(*arguments, target_column="label")
    assert read_dataset(features, target_column="label").targets.tolist() == [0, 1]
    with (
        Client("127.0.0.1:9") as client,
        pytest.raises(ValueError, match="the features are an array"),
    ):
        client.upload_dataset(np.ones((2, 2)), np.array([1, 0]), target_column="label")


def test_a_file_that_is_not_of_its_kind_is_refused_naming_it_and_its_kind(tmp_path: Path) -> None:
    """An empty .npy, a .npz that is no zip archive and a CSV cell past the csv module's limit
    ended in EOFError, BadZipFile and csv.Error tracebacks; a .npy of garbage got numpy's advice
    to load it "unsafely" with allow_pickle."""
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"garbage, not an array")
    (tmp_path / "t.npz").write_bytes(b"PK\x03\x04junk")
    huge = write(tmp_path, "a,b,label\n1," + "2" * 200_000 + ",0\n", name="huge.csv")
    np.save(tmp_path / "x.npy", np.ones((2, 2)))
    npy = r"is not a readable NumPy array file \(\.npy\): "
    for call, message in (
        (lambda: read_dataset(empty, tmp_path / "x.npy"), rf"empty\.npy {npy}it is empty"),
        (lambda: read_dataset(tmp_path / "x.npy", empty), rf"empty\.npy {npy}it is empty"),
        (lambda: read_model_inputs(empty, lambda: []), rf"empty\.npy {npy}it is empty"),
        (lambda: read_model_inputs(garbage, lambda: []), rf"garbage\.npy {npy}it holds no array"),
        (lambda: read_dataset(tmp_path / "t.npz"), r"t\.npz is not a readable NumPy archive"),
        (lambda: read_dataset(huge), r"huge\.csv:2 is not a readable CSV file: a cell is longer"),
        (lambda: read_model_inputs(huge, lambda: []), r"huge\.csv:2 is not a readable CSV file"),
    ):
        with pytest.raises(ValueError, match=message) as refused:
            call()
        assert "allow_pickle" not in str(refused.value)
    with (
        Client("127.0.0.1:9") as client,
        pytest.raises(ValueError, match=rf"empty\.npy {npy}it is empty"),
    ):
        client.upload_dataset(np.ones((2, 2)), empty)


def test_a_dataset_file_of_one_column_is_refused_with_a_hint_at_the_delimiter(
    tmp_path: Path,
) -> None:
    """A semicolon-separated file was read as one column of word targets and no features, which
    the server refused as "examples have 0 features"."""
    semicolons = write(tmp_path, "a;b;label\n1;2;0\n3;4;1\n")
    with pytest.raises(ValueError, match=r"data\.csv has a single column.*such as ';'"):
        read_dataset(semicolons)


CLASSIFIED = Prediction(
    outputs=np.array([[0.1, 0.9], [0.8, 0.2]], np.float32),
    probabilities=np.array([[0.4, 0.6], [0.7, 0.3]], np.float32),
    labels=np.array([1, 0]),
    checkpoint="jobs/x/checkpoints/1",
)


def symlink_to_a_victim(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """`name` in tmp_path, a symlink to another file (`victim.txt`), as someone may leave one
    where they expect an output to be written."""
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours to overwrite\n")
    link = tmp_path / name
    link.symlink_to(victim)
    return link, victim


@pytest.mark.parametrize("suffix", [".json", ".csv", ".npy"])
def test_a_prediction_replaces_a_symlink_at_its_path_rather_than_writing_through_it(
    tmp_path: Path, suffix: str
) -> None:
    """`predict --output out.json` overwrote what a symlink named out.json pointed to."""
    output, victim = symlink_to_a_victim(tmp_path, f"out{suffix}")
    write_prediction(output, CLASSIFIED, ["no", "yes"])
    assert victim.read_text() == "not yours to overwrite\n"
    assert output.is_file() and not output.is_symlink()
    if suffix == ".json":
        assert json.loads(output.read_text())["label_names"] == ["yes", "no"]
    elif suffix == ".csv":
        assert output.read_text().splitlines() == ["label,p0,p1", "1,0.4,0.6", "0,0.7,0.3"]
    else:
        assert np.load(output).tolist() == [1, 0]
    assert sorted(path.name for path in tmp_path.iterdir()) == [output.name, "victim.txt"]


def test_a_prediction_that_fails_midway_leaves_the_file_it_was_to_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was written in place: a failure (a full disk) left half a file where the old one was."""
    output = tmp_path / "out.csv"
    output.write_text("the previous predictions\n")
    writer = csv.writer

    class FullDisk:
        def __init__(self, handle: Any) -> None:
            self.rows = writer(handle)

        def writerow(self, row: Any) -> None:
            self.rows.writerow(row)
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(csv, "writer", FullDisk)
    with pytest.raises(OSError, match="No space left"):
        write_prediction(output, CLASSIFIED)
    monkeypatch.undo()
    assert output.read_text() == "the previous predictions\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.csv"], "no temporary file left"


def test_a_plot_replaces_a_symlink_at_its_path_rather_than_writing_through_it(
    tmp_path: Path,
) -> None:
    from trainwire.client.plot import save_metrics_plot

    output, victim = symlink_to_a_victim(tmp_path, "curves.png")
    save_metrics_plot({"loss": np.array([[1.0, 1.0, 0.5], [2.0, 2.0, 0.25]])}, output)
    assert victim.read_text() == "not yours to overwrite\n"
    assert not output.is_symlink() and output.read_bytes().startswith(b"\x89PNG")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["curves.png", "victim.txt"]


def test_a_file_in_a_folder_that_does_not_exist_is_named_as_asked(tmp_path: Path) -> None:
    """Not by the temporary name it is first written under."""
    missing = tmp_path / "nowhere" / "curves.png"
    with pytest.raises(FileNotFoundError) as refused, replaced_file(missing):
        pass
    assert refused.value.filename == str(missing)


@pytest.mark.parametrize("marker", ["NA", "n/a", "nan", "NaN", "NULL", "None", "#N/A", " na "])
def test_a_missing_value_marker_in_the_target_column_is_refused_naming_its_row(
    tmp_path: Path, marker: str
) -> None:
    """A target "0.5, NA, 1.5" became a 3-class classification with a class "NA", and
    "0, NA, 1" got an extra class "NA": one cell that is no number made the column words."""
    for targets in ("0.5", "0"):
        path = write(tmp_path, f"a,b,target\n1,2,{targets}\n3,4,{marker}\n5,6,1.5\n")
        message = f"data.csv: row 3 has no target (column 'target' holds {marker.strip()!r}, a"
        with pytest.raises(ValueError, match=re.escape(message)):
            read_csv(path)


@pytest.mark.parametrize(
    ("cell", "why"),
    [
        ("nan", "a missing value"),
        ("-inf", "which is no finite number"),
        ("1e40", "beyond the range of float32 (+-3.4e+38)"),
    ],
)
def test_a_cell_that_is_no_finite_float32_is_refused_naming_its_line_and_column(
    tmp_path: Path, cell: str, why: str
) -> None:
    """Refused by the server alone ("features: must be finite; found nan at index (1, 1)"),
    naming no file, line or column; 1e40 printed numpy's overflow RuntimeWarning first."""
    features = write(tmp_path, f"a,b,target\n1,2,0\n3,{cell},1\n")
    message = f"data.csv:3: feature column 'b' holds {cell!r}, {why}; every feature must be a"
    with pytest.raises(ValueError, match=re.escape(message)):
        read_csv(features)  # pytest's filterwarnings=error setting would fail on the warning
    with pytest.raises(ValueError, match=re.escape("data.csv:2: feature column 1 (counting")):
        read_model_inputs(write(tmp_path, f"1,2\n3,{cell}\n"), lambda: [])
    if cell != "nan":  # a missing target, refused as such
        targets = write(tmp_path, f"a,b,target\n1,2,0.5\n3,4,{cell}\n")
        message = f"data.csv:3: target column 'target' holds {cell!r}, {why}; every target"
        with pytest.raises(ValueError, match=re.escape(message)):
            read_csv(targets)


def test_an_integer_target_past_int64_is_refused_naming_its_line(tmp_path: Path) -> None:
    """It ended in a bare OverflowError (a traceback from the CLI)."""
    path = write(tmp_path, "a,b,target\n1,2,0\n3,4,123456789012345678901234567890\n")
    with pytest.raises(ValueError, match=r"data\.csv:3: target column 'target' holds '1234.*too"):
        read_csv(path)
    # Past 4,300 digits int() raised its own ValueError, naming no file; a quoted cell is cut.
    path = write(tmp_path, "a,b,target\n1,2,0\n3,4," + "9" * 5_000 + "\n")
    with pytest.raises(ValueError, match=r"data\.csv:3: .*'9+'…\(5000 characters\), too large"):
        read_csv(path)
    # Leading zeros are no digits of its size.
    assert read_csv(write(tmp_path, "a,target\n1," + "0" * 30 + "7\n")).targets.tolist() == [7]


@pytest.mark.parametrize(
    ("encoding", "where", "reason"),
    [
        ("latin-1", "data.csv:3", "byte 0xe9 is not UTF-8 text"),
        ("utf-16", "data.csv:1", "it is UTF-16 text, not UTF-8"),
    ],
)
def test_a_csv_file_that_is_not_utf8_is_refused_naming_it_and_its_line(
    tmp_path: Path, encoding: str, where: str, reason: str
) -> None:
    """It ended in "'utf-8' codec can't decode byte 0xe9 in position 18", naming no file."""
    path = write(tmp_path, "a,b,label\n1,2,x\n3,4,caf\u00e9\n", encoding=encoding)
    message = f"{where} is not a readable CSV file: {reason}; save it as CSV UTF-8"
    for call in (lambda: read_csv(path), lambda: read_model_inputs(path, lambda: [])):
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def test_pandas_default_column_names_are_a_header(tmp_path: Path) -> None:
    """`pd.DataFrame(np.c_[X, y]).to_csv(index=False)` writes the header 0,1,...,n-1, which was
    read as a row of data: one more example, and one more class (label 4)."""
    path = write(tmp_path, "0,1,2,3\n5.1,3.5,1.4,0\n4.9,3.0,1.4,1\n")
    table = read_csv(path)
    assert table.features.shape == (2, 3) and table.feature_names == ["0", "1", "2"]
    assert table.targets is not None and table.targets.tolist() == [0, 1]
    # Said otherwise, it is data; and a first row that looks like data can be said a header.
    assert read_csv(path, header=False).targets.tolist() == [3, 0, 1]  # type: ignore[union-attr]
    two = write(tmp_path, "0,1\n2,1\n", name="two.csv")
    assert read_csv(two).features.tolist() == [[0], [2]], "0,1 is too likely data to guess"
    assert read_csv(two, header=True).feature_names == ["0"]
    same = write(tmp_path, "0,1,2\n0,1,2\n", name="same.csv")
    assert read_csv(same).features.shape == (2, 2), "a row like the ones below it is data"
    assert read_model_inputs(path, lambda: [], header=False).shape == (3, 4)
    with pytest.raises(ValueError, match=r"'target' is a name, but .*\(header=False\): give"):
        read_csv(path, "target", header=False)


def test_a_column_without_a_name_is_refused_as_pandas_index(tmp_path: Path) -> None:
    """`df.to_csv()` writes pandas' index as a first column named "", which was kept as a
    feature (on sorted data it gives the label away)."""
    path = write(tmp_path, ",a,b,species\n0,1,2,setosa\n1,3,4,virginica\n")
    message = "data.csv: column 0 (counting from 0) has no name in the header: an index written"
    for call in (lambda: read_csv(path), lambda: read_model_inputs(path, lambda: [])):
        with pytest.raises(ValueError, match=re.escape(message) + ".*index=False"):
            call()


def test_a_target_column_named_twice_is_refused_asking_for_its_index(tmp_path: Path) -> None:
    """With columns a,a,target, target_column="a" took the first a without a word."""
    path = write(tmp_path, "a,a,target\n1,2,0\n3,4,1\n")
    message = "target column 'a' is named 2 times in "
    with pytest.raises(ValueError, match=re.escape(message) + r".*\(columns 0, 1, counting"):
        read_csv(path, "a")
    assert read_csv(path, 1).features.tolist() == [[1, 0], [3, 1]]


def test_a_targets_file_of_several_columns_needs_its_target_column(tmp_path: Path) -> None:
    """`Series.to_csv()` writes the index beside the targets (",target" then "0,2", "1,0"): the
    targets were read from column 0, the index, and the rest ignored."""
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    labels = write(tmp_path, ",target\n0,2\n1,0\n2,1\n", "y.csv")
    message = "y.csv has 2 columns ('', 'target'), but a targets file holds one: pick the"
    with pytest.raises(ValueError, match=re.escape(message)):
        read_dataset(tmp_path / "x.npy", labels)
    table = read_dataset(tmp_path / "x.npy", labels, target_column="target")
    assert table.targets is not None and table.targets.tolist() == [2, 0, 1]
    assert read_dataset(tmp_path / "x.npy", labels, target_column=1).targets.tolist() == [2, 0, 1]


def test_array_features_take_a_csv_targets_file(tmp_path: Path) -> None:
    """The docstring promised "an array, or an NPY or CSV file" of targets, but a CSV file was
    read as an .npy one: "is not a readable NumPy array file"."""
    labels = write(tmp_path, "setosa\nvirginica\nsetosa\n", "y.csv")
    upload = Client._prepare(
        np.zeros((3, 2), np.float32), labels, None, "", 0, (), (), None, None
    )  # fmt: skip
    assert list(upload.header.class_names) == ["setosa", "virginica"]
    assert upload.header.targets.shape == [3]
    two = write(tmp_path, "i,y\n0,1.5\n1,2.5\n2,3.5\n", "two.csv")
    upload = Client._prepare(np.zeros((3, 2)), two, None, "", 0, (), (), None, "y")
    assert upload.header.targets.shape == [3], "column y, picked by target_column"


def test_targets_one_apart_from_the_features_suggest_a_header(tmp_path: Path) -> None:
    """A word-targets file with a header ("species" above "setosa") counts its header as a
    target: "3 rows of features but 4 targets", with no word of why."""
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    labels = write(tmp_path, "species\nsetosa\nvirginica\nsetosa\n", "y.csv")
    with pytest.raises(ValueError, match=r"but .*y\.csv has 4 targets; .*header=True \(--header"):
        read_dataset(tmp_path / "x.npy", labels)
    table = read_dataset(tmp_path / "x.npy", labels, header=True)
    assert table.class_names == ["setosa", "virginica"]


def test_word_labels_are_numbered_in_the_order_of_the_class_names_given(tmp_path: Path) -> None:
    """With class_names=["malignant", "benign"], words were numbered in sorted order (benign 0)
    while the names were stored as given: every predicted class name was the other one."""
    path = write(tmp_path, "a,diagnosis\n1,benign\n2,malignant\n3,benign\n")
    upload = Client._prepare(path, None, None, "", 0, (), ["malignant", "benign"], None, None)
    assert list(upload.header.class_names) == ["malignant", "benign"]
    assert np.frombuffer(upload.payloads[1], np.int64).tolist() == [1, 0, 1]
    # A name no row has is a class without examples, counted; a word not named is refused.
    upload = Client._prepare(path, None, None, "", 0, (), ["malignant", "benign", "x"], None, None)
    assert (upload.header.num_classes, upload.header.task) == (3, TASKS["multiclass"])
    message = "data.csv:3: target column 'diagnosis' holds 'malignant', which is not among the"
    with pytest.raises(ValueError, match=re.escape(message) + r" class names given \(benign, x\)"):
        read_csv(path, class_names=["benign", "x"])


def test_array_files_are_checked_naming_the_file(tmp_path: Path) -> None:
    """Text labels in an .npy or .npz file, float16 features, an .npz member that is no array
    and an .npz of 3 rows of X and 4 targets were refused without naming the file ("dtype <U10
    is not supported"), or by the server alone."""
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    np.save(tmp_path / "words.npy", np.array(["setosa", "virginica", "setosa"]))
    table = read_dataset(tmp_path / "x.npy", tmp_path / "words.npy")
    assert table.class_names == ["setosa", "virginica"] and table.targets.tolist() == [0, 1, 0]
    np.savez(tmp_path / "w.npz", X=np.zeros((3, 2)), y=np.array(["b", "a", "b"]))
    assert read_dataset(tmp_path / "w.npz", class_names=["b", "a"]).targets.tolist() == [0, 1, 0]
    np.save(tmp_path / "half.npy", np.zeros((3, 2), np.float16))
    np.save(tmp_path / "y.npy", np.array([0, 1, 0]))
    half = Client._prepare(
        tmp_path / "half.npy", tmp_path / "y.npy", None, "", 0, (), (), None, None
    )
    assert len(half.payloads[0]) == 3 * 2 * 4, "sent as float32"
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"bad\.npz holds 3 rows of features \(X\) but 4 targets"):
        read_dataset(tmp_path / "bad.npz")
    np.save(tmp_path / "bytes.npy", np.array([b"a", b"b", b"a"]))
    with pytest.raises(ValueError, match=r"bytes\.npy holds targets of dtype \|S1, which is no"):
        read_dataset(tmp_path / "x.npy", tmp_path / "bytes.npy")
    with pytest.raises(ValueError, match=r"words\.npy holds features of dtype <U9, which are no"):
        read_dataset(tmp_path / "words.npy", tmp_path / "y.npy")
    with zipfile.ZipFile(tmp_path / "garbage.npz", "w") as archive:
        archive.writestr("X", b"not an array")
        archive.writestr("y", b"nor this")
    message = r"garbage\.npz is not a readable NumPy archive \(\.npz\): its member 'X' is no Num"
    with pytest.raises(ValueError, match=message):
        read_dataset(tmp_path / "garbage.npz")


def test_a_large_csv_file_is_read_in_blocks_never_held_whole_as_text(tmp_path: Path) -> None:
    """Each row was held as a list of Python strings until the whole file was read: a 50 MB
    file of 339,000 rows took 1.7 GB. Rows are converted to numbers a block at a time, so the
    reading needs a small multiple of the file's size (allocations traced by
    tracemalloc, not timed: here 15 times the file's size before, 1.5 times now)."""
    rng = np.random.default_rng(0)
    rows = 20_000
    table = np.column_stack([rng.normal(size=(rows, 32)).round(4), rng.integers(0, 10, rows)])
    path = tmp_path / "large.csv"
    header = ",".join([*(f"f{i}" for i in range(32)), "label"])
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt=["%.4f"] * 32 + ["%d"])
    tracemalloc.start()
    try:
        read = read_csv(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert read.features.shape == (rows, 32) and read.targets is not None
    assert np.array_equal(read.features, table[:, :32].astype(np.float32))
    assert np.array_equal(read.targets, table[:, 32].astype(np.int64))
    assert peak < 3 * path.stat().st_size, (peak, path.stat().st_size)


def test_a_header_of_numbers_above_word_labels_is_not_taken_for_data_unasked(
    tmp_path: Path,
) -> None:
    """A spectrum's wavelengths above its class column (`400,450,500,species`) were read as a
    row of data, and `species` as a class of one example, without a word."""
    rows = "".join(f"{i}.5,{i}.25,{i}.75,{('setosa', 'virginica')[i % 2]}\n" for i in range(6))
    path = write(tmp_path, "400,450,500,species\n" + rows)
    with pytest.raises(ValueError, match=r"data\.csv:1: is the first line a header\? .*'species'"):
        read_csv(path)
    named = read_csv(path, header=True)
    assert named.feature_names == ["400", "450", "500"] and len(named.features) == 6
    assert named.class_names == ["setosa", "virginica"]
    assert read_csv(path, header=False).class_names == ["setosa", "species", "virginica"]
