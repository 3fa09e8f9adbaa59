"""Landmark files: VGGFace2's loose_landmark CSV and IJB's name_5pts_score list, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricface.data import LandmarkTable, read_ijb_landmarks, read_vggface2_landmarks

HEADER = "NAME_ID,P1X,P1Y,P2X,P2Y,P3X,P3Y,P4X,P4Y,P5X,P5Y"
QUOTED_HEADER = ",".join(f'"{h}"' for h in HEADER.split(","))
ROWS = [
    (
        "n000002/0001_01",
        [75.81253, 110.2077, 103.1778, 104.6074, 90.07, 126.69, 80.43, 146.64, 104.87, 142.88],
    ),
    (
        "n000002/0002_01",
        [194.9206, 211.5826, 278.5339, 206.3202, 240.1, 260.55, 200.0, 300.25, 270.5, 296.0],
    ),
    (
        "n000003/0001_02",
        [80.4145, 74.07401, 111.7425, 75.42367, 96.9, 93.1, 84.2, 110.7, 108.3, 111.6],
    ),
]


def vggface2_text(rows=ROWS, header=QUOTED_HEADER, newline="\n") -> str:
    lines = [header] + [f'"{name}",' + ",".join(repr(v) for v in values) for name, values in rows]
    return newline.join(lines) + newline


@pytest.mark.parametrize("header", [QUOTED_HEADER, HEADER])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_vggface2_file_reads_back(tmp_path, header, newline):
    path = tmp_path / "loose_landmark_train.csv"
    path.write_bytes(vggface2_text(header=header, newline=newline).encode())
    table = read_vggface2_landmarks(path)
    assert isinstance(table, LandmarkTable)
    assert table.names == [name for name, _ in ROWS]
    assert table.points.dtype == np.float32 and table.points.shape == (3, 5, 2)
    expected = np.array([values for _, values in ROWS], dtype=np.float32).reshape(3, 5, 2)
    np.testing.assert_array_equal(table.points, expected)
    assert table.scores is None
    assert table.points[0, 1].tolist() == pytest.approx([103.1778, 104.6074])  # P2 = right eye


def test_vggface2_byte_order_mark_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "lm.csv"
    path.write_bytes(b"\xef\xbb\xbf" + vggface2_text().replace("\n", "\n\n", 1).encode())
    assert len(read_vggface2_landmarks(path).names) == 3


@given(
    st.lists(
        st.lists(st.floats(-1e4, 1e4, width=32), min_size=10, max_size=10),
        min_size=1,
        max_size=20,
    )
)
def test_vggface2_round_trips_any_float32_coordinates(tmp_path_factory, values):
    rows = [(f"n{i:06d}/0001_01", [float(v) for v in row]) for i, row in enumerate(values)]
    path = tmp_path_factory.mktemp("lm") / "lm.csv"
    path.write_text(vggface2_text(rows))
    table = read_vggface2_landmarks(path)
    np.testing.assert_array_equal(table.points.reshape(-1, 10), np.array(values, np.float32))


def test_an_empty_vggface2_table_has_the_right_shape(tmp_path):
    path = tmp_path / "lm.csv"
    path.write_text(QUOTED_HEADER + "\n")
    table = read_vggface2_landmarks(path)
    assert table.names == [] and table.points.shape == (0, 5, 2)


IJB = (
    "1.jpg 46.060 62.026 87.785 60.323 68.851 77.656 52.162 99.804 83.444 98.434 0.999803\n"
    "2.jpg 42.919 58.691 81.834 55.893 64.565 74.318 48.973 95.063 79.463 92.761 0.998812\n"
    "17.jpg 39.5 54.6 73.5 53.0 58.1 67.9 44.0 83.4 70.8 82.3 0.523\n"
)


def test_ijb_file_reads_back(tmp_path):
    path = tmp_path / "ijbc_name_5pts_score.txt"
    path.write_text(IJB)
    table = read_ijb_landmarks(path)
    assert table.names == ["1.jpg", "2.jpg", "17.jpg"]
    assert table.points.dtype == np.float32 and table.points.shape == (3, 5, 2)
    rows = [line.split() for line in IJB.splitlines()]
    expected = np.array([[float(v) for v in r[1:11]] for r in rows], np.float32).reshape(3, 5, 2)
    np.testing.assert_array_equal(table.points, expected)
    np.testing.assert_array_equal(table.scores, np.array([0.999803, 0.998812, 0.523], np.float32))


def test_ijb_tabs_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "lm.txt"
    path.write_text("\n" + IJB.replace(" ", "\t", 3) + "\n\n")
    assert read_ijb_landmarks(path).names == ["1.jpg", "2.jpg", "17.jpg"]


def _rewrite_line(text: str, lineno: int, new: str) -> str:
    lines = text.splitlines()
    lines[lineno - 1] = new
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("line3", "message"),
    [
        ('"n000002/0002_01",1,2,3,4,5,6,7,8,9', "line 3: expected 11 fields .* got 10"),
        ('"n000002/0002_01",1,2,3,4,5,6,7,8,9,10,11', "line 3: expected 11 fields .* got 12"),
        ('"n000002/0002_01",1,2,3,4,5,6,7,8,9,10,', "line 3: expected 11 fields .* got 12"),
        ('"n000002/0002_01",1,2,3,4,x,6,7,8,9,10', "line 3: expected numbers"),
        ('"n000002/0002_01",1,2,3,4,nan,6,7,8,9,10', "line 3: expected finite numbers"),
        (
            '"n000002/0001_01",1,2,3,4,5,6,7,8,9,10',
            "line 3: 'n000002/0001_01' is listed again .* line 2",
        ),
    ],
)
def test_malformed_vggface2_rows_name_file_and_line(tmp_path, line3, message):
    path = tmp_path / "lm.csv"
    path.write_text(_rewrite_line(vggface2_text(), 3, line3))
    with pytest.raises(ValueError, match=f"lm.csv' {message}"):
        read_vggface2_landmarks(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty: expected the header NAME_ID,P1X"),
        ("name,x1,y1\n", "line 1: expected the header NAME_ID,P1X"),
        (IJB, "line 1: expected the header"),
    ],
)
def test_a_vggface2_file_needs_its_header(tmp_path, text, message):
    path = tmp_path / "lm.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_vggface2_landmarks(path)


@pytest.mark.parametrize(
    ("line2", "message"),
    [
        (
            "2.jpg 42.9 58.6 81.8 55.8 64.5 74.3 48.9 95.0 79.4 92.7",
            "line 2: expected 12 fields .* got 11",
        ),
        (
            "2.jpg 42.9 58.6 81.8 55.8 64.5 74.3 48.9 95.0 79.4 92.7 0.9 7",
            "line 2: expected 12 fields .* got 13",
        ),
        (
            "2.jpg 42.9 58.6 81.8 55.8 64.5 74.3 48.9 95.0 79.4 92.7 high",
            "line 2: expected numbers",
        ),
        ("2.jpg 42.9 58.6 81.8 55.8 64.5 74.3 48.9 95.0 79.4 inf 0.9", "line 2: expected finite"),
        (
            "1.jpg 42.9 58.6 81.8 55.8 64.5 74.3 48.9 95.0 79.4 92.7 0.9",
            "line 2: '1.jpg' is listed again .* line 1",
        ),
    ],
)
def test_malformed_ijb_lines_name_file_and_line(tmp_path, line2, message):
    path = tmp_path / "ijbc_name_5pts_score.txt"
    path.write_text(_rewrite_line(IJB, 2, line2))
    with pytest.raises(ValueError, match=f"ijbc_name_5pts_score.txt' {message}"):
        read_ijb_landmarks(path)


def test_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        read_vggface2_landmarks(tmp_path / "absent.csv")
    with pytest.raises(OSError):
        read_ijb_landmarks(tmp_path / "absent.txt")


@pytest.mark.parametrize("read", [read_vggface2_landmarks, read_ijb_landmarks])
def test_a_file_that_is_not_utf8_is_named(tmp_path, read):
    path = tmp_path / "landmarks.csv"
    header = '"NAME_ID","P1X","P1Y","P2X","P2Y","P3X","P3Y","P4X","P4Y","P5X","P5Y"\n'
    row = "caf\u00e9/1.jpg" + ",1" * 10 + ("\n" if read is read_vggface2_landmarks else " 0.9\n")
    text = (header if read is read_vggface2_landmarks else "") + row
    path.write_bytes(
        text.replace(",", " " if read is read_ijb_landmarks else ",").encode("latin-1")
    )
    with pytest.raises(ValueError, match=r"landmarks\.csv' is not UTF-8 text .* save it as UTF-8"):
        read(path)
