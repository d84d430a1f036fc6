import os
import re
import tarfile

import numpy as np
import pytest

from medjax.data import physionet2012 as pn
from medjax.data import time_grid
from medjax.errors import ConfigError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DIR = os.path.join(REPO_ROOT, "..", "shared", "data", "physionet2012")
V = {name: i for i, name in enumerate(pn.VARIABLES)}

# Record files in the distributed format, quirks included.
RECORD_1 = """Time,Parameter,Value
00:00,RecordID,100001
00:00,Age,54
00:00,Gender,0
00:00,Height,-1
00:00,ICUType,4
00:00,Weight,-1
00:07,HR,73
00:07,Temp,35.1
00:37,HR,77
00:40,HR,80
00:45,,
01:15,Temp,-1
01:30,,5
02:00,Weight,80
03:00,pH,735
03:00,Foo,3
05:00,Weight,0
06:00,Temp,-17.8
47:59,HR,90
48:00,HR,100
"""
RECORD_2 = """Time,Parameter,Value
00:00,RecordID,100002
00:00,Age,200
00:00,Age,70
00:00,Gender,1
00:00,Height,431.8
00:00,ICUType,2
00:00,Weight,75.5
00:00,HR,110
01:10,GCS,9
01:20,MechVent,1
"""
RECORD_5 = """Time,Parameter,Value
00:00,RecordID,100005
00:00,Age,40
00:10,HR,60
"""
OUTCOMES_HEADER = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
OUTCOMES = OUTCOMES_HEADER + "100001,6,1,5,-1,0\n100002,16,8,8,3,1\n100003,-1,-1,-1,-1,0\n"
FILES = {
    "100001.txt": RECORD_1,
    "100002.txt": RECORD_2,
    "100003.txt": "Time,Parameter,Value\n",  # no data: left out
}


def outcome_file(labels: dict) -> str:
    """The text of an Outcomes-x.txt giving each RecordID its label (in-hospital death)."""
    return OUTCOMES_HEADER + "".join(f"{i},-1,-1,-1,-1,{y}\n" for i, y in labels.items())


def write_set(directory, *, files=FILES, outcomes=OUTCOMES, tarball=False, set_name="a"):
    os.makedirs(directory, exist_ok=True)
    folder = os.path.join(directory, f"set-{set_name}")
    os.makedirs(folder)
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    if tarball:
        with tarfile.open(folder + ".tar.gz", "w:gz") as tar:
            tar.add(folder, arcname=f"set-{set_name}")
        for name in files:
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)
    if outcomes is not None:
        with open(os.path.join(directory, f"Outcomes-{set_name}.txt"), "w") as f:
            f.write(outcomes)
    return str(directory)


def assert_records_equal(a, b):
    assert [r.record_id for r in a] == [r.record_id for r in b]
    for x, y in zip(a, b):
        for field in ("times", "variables", "values", "descriptors"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
            assert getattr(x, field).dtype == getattr(y, field).dtype


@pytest.fixture(scope="module")
def fixture_set(tmp_path_factory):
    return write_set(tmp_path_factory.mktemp("physionet"))


class TestReadSet:
    def test_records_labels_and_quirk_counts(self, fixture_set):
        records, labels, stats = pn.read_set(fixture_set, "a")
        assert [r.record_id for r in records] == [100001, 100002]
        np.testing.assert_array_equal(labels, [0, 1])
        assert labels.dtype == np.int32
        assert stats["record_files"] == 3 and stats["empty_records"] == 1
        assert stats["empty_records_ids"] == [100003]
        assert stats["records"] == 2 and stats["deaths"] == 1
        assert stats["empty_parameter_lines"] == 2
        assert stats["unknown_values_dropped"] == 1  # Temp -1 (descriptor -1s become NaN)
        assert stats["placeholders_dropped"] == {"Temp": 1, "Weight": 1}
        assert stats["unknown_parameters"] == {"Foo": 1}
        assert stats["repeated_descriptors"] == 1
        assert stats["unknown_descriptors"] == dict(Age=0, Gender=0, Height=1, ICUType=0, Weight=1)
        assert stats["clipped_per_variable"] == {"Age": 1, "Height": 1, "pH": 1}
        assert stats["values_clipped"] == 3
        assert stats["observations"] == 8 + 3

    def test_record_contents(self, fixture_set):
        (r1, r2), _, _ = pn.read_set(fixture_set, "a")
        expected = [  # (time, variable, value), sorted by time; -1, 0 kg, -17.8 C dropped
            (7 / 60, "HR", 73),
            (7 / 60, "Temp", 35.1),
            (37 / 60, "HR", 77),
            (40 / 60, "HR", 80),
            (2.0, "Weight", 80),
            (3.0, "pH", 8.0),  # 735 clipped to the top of pH's range
            (47 + 59 / 60, "HR", 90),
            (48.0, "HR", 100),
        ]
        np.testing.assert_allclose(r1.times, [e[0] for e in expected], rtol=1e-6)
        np.testing.assert_array_equal(r1.variables, [V[e[1]] for e in expected])
        np.testing.assert_allclose(r1.values, [e[2] for e in expected], rtol=1e-6)
        assert r1.times[-2] == pytest.approx(47.983, abs=1e-3)
        assert (r1.times.dtype, r1.variables.dtype, r1.values.dtype) == (
            np.float32,
            np.int32,
            np.float32,
        )
        np.testing.assert_array_equal(r1.descriptors, [54, 0, np.nan, 4, np.nan])
        # Age 200 -> first value kept and clipped to 100; Height 431.8 -> 230; the Weight at
        # 00:00 is the descriptor, not an observation.
        np.testing.assert_array_equal(r2.descriptors, np.float32([100, 1, 230, 2, 75.5]))
        np.testing.assert_allclose(r2.times, [0, 70 / 60, 80 / 60], rtol=1e-6)
        np.testing.assert_array_equal(r2.variables, [V["HR"], V["GCS"], V["MechVent"]])

    def test_values_within_ranges(self, fixture_set):
        records, _, _ = pn.read_set(fixture_set, "a")
        for r in records:
            for v, value in zip(r.variables, r.values):
                low, high = pn.PHYSIOLOGICAL_RANGES[pn.VARIABLES[v]]
                assert low <= value <= high
        assert len(pn.VARIABLES) == 37 and len(set(pn.VARIABLES)) == 37
        assert set(pn.VARIABLES) | {"Age", "Height"} == set(pn.PHYSIOLOGICAL_RANGES)

    def test_tarball_equals_folder(self, fixture_set, tmp_path):
        tarred = write_set(tmp_path, tarball=True)
        assert os.listdir(tarred) != os.listdir(fixture_set)
        folder_records, folder_labels, folder_stats = pn.read_set(fixture_set, "a")
        tar_records, tar_labels, tar_stats = pn.read_set(tarred, "a")
        assert_records_equal(tar_records, folder_records)
        np.testing.assert_array_equal(tar_labels, folder_labels)
        assert tar_stats == folder_stats

    def test_empty_file_and_header_only_file_are_alike(self, tmp_path):
        files = dict(FILES, **{"100004.txt": ""})
        outcomes = OUTCOMES + "100004,-1,-1,-1,-1,1\n"
        records, _, stats = pn.read_set(write_set(tmp_path, files=files, outcomes=outcomes), "a")
        assert [r.record_id for r in records] == [100001, 100002]
        assert stats["empty_records"] == 2 and stats["empty_records_ids"] == [100003, 100004]

    def test_logs_the_quirks(self, fixture_set, caplog):
        with caplog.at_level("INFO"):
            pn.read_set(fixture_set, "a")
        text = caplog.text
        assert "1 record files hold no data and are left out: 100003" in text
        assert "2 lines with an empty Parameter skipped" in text


class TestBadInput:
    def test_missing_directory(self, tmp_path):
        with pytest.raises(ConfigError, match="does not exist.*set-a.tar.gz.*physionet.org"):
            pn.read_set(str(tmp_path / "nowhere"), "a")

    def test_no_records_lists_folder(self, tmp_path):
        write_set(tmp_path)
        os.rename(tmp_path / "set-a", tmp_path / "records")
        with pytest.raises(
            ConfigError,
            match=r"neither set-a.tar.gz nor a set-a/ .* holds: Outcomes-a.txt, records",
        ):
            pn.read_set(str(tmp_path), "a")

    def test_missing_outcomes(self, tmp_path):
        write_set(tmp_path, outcomes=None)
        with pytest.raises(ConfigError, match="Outcomes-a.txt is missing.*expected it at"):
            pn.read_set(str(tmp_path), "a")

    @pytest.mark.parametrize(
        "extra_file,extra_row,problem",
        [
            (True, False, r"1 record file\(s\) without an outcome row \(100005\)"),
            (False, True, r"1 outcome row\(s\) without a record file \(100004\)"),
            (True, True, r"1 record file\(s\) without .*100005\) and 1 outcome row\(s\) without"),
        ],
    )
    def test_outcomes_must_match_the_records(self, tmp_path, extra_file, extra_row, problem):
        files = dict(FILES, **{"100005.txt": RECORD_5}) if extra_file else FILES
        outcomes = OUTCOMES + "100004,-1,-1,-1,-1,1\n" if extra_row else OUTCOMES
        write_set(tmp_path, files=files, outcomes=outcomes)
        with pytest.raises(ConfigError) as error:
            pn.read_set(str(tmp_path), "a")
        assert re.match(rf"Outcomes-a.txt does not match set-a: {problem}", str(error.value))
        assert "the outcome file must be the one distributed with set a" in str(error.value)

    def test_outcomes_without_label_column(self, tmp_path):
        write_set(tmp_path, outcomes="RecordID,SAPS-I,SOFA\n100001,6,1\n")
        with pytest.raises(ConfigError, match="lacks the RecordID or In-hospital_death column"):
            pn.read_set(str(tmp_path), "a")

    def test_bad_outcome_row(self, tmp_path):
        write_set(tmp_path, outcomes=OUTCOMES + "100009,1,1,1,1,2\n")
        with pytest.raises(ConfigError, match=r"Outcomes-a.txt line 5: .*In-hospital_death 0 or 1"):
            pn.read_set(str(tmp_path), "a")

    def test_no_record_files(self, tmp_path):
        write_set(tmp_path, files={"README": "not a record"})
        with pytest.raises(ConfigError, match=r"holds no record files named <RecordID>.txt"):
            pn.read_set(str(tmp_path), "a")
        write_set(tmp_path / "t", files={}, tarball=True)
        with pytest.raises(ConfigError, match=r"holds no record files"):
            pn.read_set(str(tmp_path / "t"), "a")

    @pytest.mark.parametrize(
        "line",
        [
            "12:3x,HR,80",
            "12:30,HR,eighty",
            "12:30,HR",
            "12:30,HR,80,1",
            "1230,HR,80",
            "12:30,HR,nan",
        ],
    )
    def test_malformed_line(self, tmp_path, line):
        files = {"132539.txt": RECORD_5.replace("100005", "132539") + line + "\n"}
        write_set(tmp_path, files=files)
        with pytest.raises(ConfigError) as error:
            pn.read_set(str(tmp_path), "a")
        assert f'set-a/132539.txt line 5: "{line}" is not HH:MM,Parameter,Value' in str(error.value)

    def test_malformed_line_in_tarball(self, tmp_path):
        write_set(tmp_path, files={"100005.txt": RECORD_5 + "12:3x,HR,80\n"}, tarball=True)
        with pytest.raises(ConfigError, match=r'set-a/100005.txt line 5: "12:3x,HR,80"'):
            pn.read_set(str(tmp_path), "a")

    def test_bad_header_corrupt_tarball_and_bad_set(self, tmp_path):
        write_set(tmp_path / "h", files={"100005.txt": RECORD_5.replace("Time,", "Tme,")})
        with pytest.raises(ConfigError, match=r"100005.txt line 1: .* is not the header"):
            pn.read_set(str(tmp_path / "h"), "a")
        with open(tmp_path / "set-a.tar.gz", "wb") as f:
            f.write(b"not a tarball")
        with open(tmp_path / "Outcomes-a.txt", "w") as f:
            f.write(OUTCOMES)
        with pytest.raises(ConfigError, match=r"set-a.tar.gz is not a readable .tar.gz") as error:
            pn.read_set(str(tmp_path), "a")
        assert "\n" not in str(error.value) and "(not a gzip file)" in str(error.value)
        with pytest.raises(ConfigError, match="unknown PhysioNet 2012 set 'd'; valid: a, b, c"):
            pn.read_set(str(tmp_path), "d")


def make_record(record_id, observations, descriptors=(50, 1, 170, 1, 70)):
    times, names, values = zip(*observations) if observations else ((), (), ())
    return pn.Record(
        record_id,
        np.array(times, np.float32),
        np.array([V[n] for n in names], np.int32),
        np.array(values, np.float32),
        np.array(descriptors, np.float32),
    )


class TestToGrid:
    def test_hand_computed(self):
        records = [
            make_record(
                1,
                [
                    (0.1, "HR", 70),
                    (0.5, "HR", 80),  # same bin as 0.1: mean 75
                    (1.0, "Temp", 37),  # a bin edge belongs to the later bin
                    (2.5, "HR", 90),
                    (4.0, "GCS", 15),  # at `hours`: dropped
                ],
            ),
            make_record(2, [(5.0, "HR", 60)], descriptors=(np.nan,) * 5),  # all outside
        ]
        grid = time_grid.to_grid(records, hours=4, step_hours=1)
        hr, temp = V["HR"], V["Temp"]
        assert grid["values"].shape == grid["mask"].shape == grid["delta"].shape == (2, 4, 37)
        assert {k: a.dtype for k, a in grid.items()} == dict(
            values=np.float32,
            mask=np.float32,
            delta=np.float32,
            lengths=np.int32,
            descriptors=np.float32,
            record_ids=np.int64,
        )
        np.testing.assert_array_equal(grid["values"][0, :, hr], [75, 0, 90, 0])
        np.testing.assert_array_equal(grid["mask"][0, :, hr], [1, 0, 1, 0])
        np.testing.assert_array_equal(grid["delta"][0, :, hr], [0, 1, 2, 1])
        np.testing.assert_array_equal(grid["values"][0, :, temp], [0, 37, 0, 0])
        np.testing.assert_array_equal(grid["mask"][0, :, temp], [0, 1, 0, 0])
        np.testing.assert_array_equal(grid["delta"][0, :, temp], [0, 1, 1, 2])
        others = [i for i in range(37) if i not in (hr, temp)]
        assert not grid["mask"][0][:, others].any() and not grid["values"][0][:, others].any()
        assert not grid["mask"][1].any()
        never = np.broadcast_to(np.array([0, 1, 2, 3], np.float32)[:, None], (4, 35))
        np.testing.assert_array_equal(grid["delta"][0][:, others], never)
        np.testing.assert_array_equal(grid["lengths"], [3, 1])
        np.testing.assert_array_equal(grid["descriptors"][0], [50, 1, 170, 1, 70])
        assert np.isnan(grid["descriptors"][1]).all()
        np.testing.assert_array_equal(grid["record_ids"], [1, 2])

    def test_half_hour_steps_and_last_bin(self):
        grid = time_grid.to_grid(
            [make_record(7, [(0.5, "HR", 1), (1.9, "HR", 2)])], hours=2, step_hours=0.5
        )
        np.testing.assert_array_equal(grid["mask"][0, :, V["HR"]], [0, 1, 0, 1])
        np.testing.assert_array_equal(grid["delta"][0, :, V["HR"]], [0, 0.5, 0.5, 1.0])
        np.testing.assert_array_equal(grid["lengths"], [4])

    def test_ten_minute_steps_from_parsed_times(self, tmp_path):
        # Times parsed from HH:MM are float32; each must land in its own 10-minute bin.
        lines = [f"{m // 60:02d}:{m % 60:02d},Urine,{m}" for m in range(0, 48 * 60, 10)]
        text = "Time,Parameter,Value\n00:00,RecordID,100005\n" + "\n".join(lines) + "\n"
        write_set(tmp_path, files={"100005.txt": text}, outcomes=outcome_file({100005: 1}))
        records, labels, _ = pn.read_set(str(tmp_path), "a")
        grid = time_grid.to_grid(records, step_hours=1 / 6)
        assert grid["mask"].shape == (1, 288, 37)
        np.testing.assert_array_equal(grid["mask"][0, :, V["Urine"]], np.ones(288))
        np.testing.assert_array_equal(grid["values"][0, :, V["Urine"]], np.arange(0, 2880, 10))
        np.testing.assert_array_equal(labels, [1])

    def test_fixture_hour_bins(self, fixture_set):
        records, _, _ = pn.read_set(fixture_set, "a")
        grid = time_grid.to_grid(records)
        hr = grid["values"][0, :, V["HR"]]
        assert hr[0] == pytest.approx((73 + 77 + 80) / 3)  # three HR lines in the first hour
        assert hr[47] == 90  # the 48:00 value is outside a 48 h grid
        np.testing.assert_array_equal(grid["lengths"], [48, 2])

    @pytest.mark.parametrize("hours,step", [(48, 0), (0, 1), (48, 5), (-2, 1)])
    def test_bad_grid(self, hours, step):
        with pytest.raises(ConfigError, match="whole multiple of step_hours"):
            time_grid.to_grid([], hours=hours, step_hours=step)


class TestFitNormalizer:
    def test_train_records_only(self):
        rng = np.random.default_rng(0)
        names = ["HR", "Temp", "Glucose"]

        def stay(record_id, shift):
            hours = rng.choice(48, size=20, replace=False)  # at most one value per bin
            obs = [(h + 0.25, names[h % 3], rng.normal(50 + shift, 5)) for h in hours]
            return make_record(record_id, obs)

        train = [stay(i, 0) for i in range(6)]
        test = [stay(100 + i, 100) for i in range(4)]  # a leak would move the mean by ~40
        grid = time_grid.to_grid(train + test)
        mean, std = time_grid.fit_normalizer(grid["values"][:6], grid["mask"][:6])
        for name in names:
            raw = np.concatenate([r.values[r.variables == V[name]] for r in train])
            assert mean[V[name]] == pytest.approx(np.mean(raw), rel=1e-5)
            assert std[V[name]] == pytest.approx(np.std(raw), rel=1e-5)
        all_mean, _ = time_grid.fit_normalizer(grid["values"], grid["mask"])
        assert abs(all_mean[V["HR"]] - mean[V["HR"]]) > 20
        assert mean[V["pH"]] == 0 and std[V["pH"]] == 1  # never observed
        assert mean.shape == std.shape == (37,) and mean.dtype == std.dtype == np.float32

    def test_ignores_unobserved_entries_and_constant_variables(self):
        values = np.array([[[1.0, 5.0], [3.0, 1e6]], [[1e6, 5.0], [2.0, 5.0]]], np.float32)
        mask = np.array([[[1, 1], [1, 0]], [[0, 1], [1, 1]]], np.float32)
        mean, std = time_grid.fit_normalizer(values, mask)
        np.testing.assert_allclose(mean, [2.0, 5.0])
        np.testing.assert_allclose(std, [np.std([1.0, 3.0, 2.0]), 1.0])  # constant -> std 1


@pytest.mark.slow  # reads the real sets
@pytest.mark.skipif(not os.path.isdir(REAL_DIR), reason="../shared/data is absent")
class TestRealSets:
    def test_counts_agree_with_readme(self):
        records, labels, stats = pn.read_set(REAL_DIR, "a")
        # README: 4000 ICU stays, 554 in-hospital deaths; four records hold descriptors only.
        assert len(records) == len(labels) == stats["records"] == 4000
        assert int(labels.sum()) == stats["deaths"] == 554
        assert stats["record_files"] == 4000 and stats["empty_records"] == 0
        assert stats["empty_parameter_lines"] == 0 and stats["unknown_parameters"] == {}
        assert stats["unknown_values_dropped"] == 0
        assert stats["placeholders_dropped"] == {"Temp": 63, "Weight": 184}
        assert stats["observations"] == 1733733
        assert stats["unknown_descriptors"]["ICUType"] == 0  # every record names its ICU
        by_id = {r.record_id: r for r in records}
        assert [by_id[i].times.size for i in (140501, 140936, 141264)] == [0, 0, 0]
        np.testing.assert_array_equal(by_id[140501].descriptors[[0, 1, 3]], [31, 1, 3])
        ids = [r.record_id for r in records]
        assert ids == sorted(ids) and ids[0] == 132539
        first = records[0]  # set-a/132539.txt: Age 54, Gender 0, Height -1, Weight -1
        np.testing.assert_array_equal(first.descriptors[[0, 1]], [54, 0])
        assert np.isnan(first.descriptors[[2, 4]]).all()
        assert first.times[0] == pytest.approx(7 / 60) and first.variables[0] == V["GCS"]

        grid = time_grid.to_grid(records)
        assert grid["values"].shape == (4000, 48, 37)
        assert (grid["lengths"] >= 1).all() and (grid["lengths"] <= 48).all()
        low = np.array([pn.PHYSIOLOGICAL_RANGES[v][0] for v in pn.VARIABLES])
        high = np.array([pn.PHYSIOLOGICAL_RANGES[v][1] for v in pn.VARIABLES])
        observed = grid["mask"] > 0
        assert (grid["values"] >= low - 1e-4)[observed].all()
        assert (grid["values"] <= high + 1e-4)[observed].all()
        mean, std = time_grid.fit_normalizer(grid["values"], grid["mask"])
        assert 60 < mean[V["HR"]] < 110 and 36 < mean[V["Temp"]] < 38.5
        assert 7.3 < mean[V["pH"]] < 7.5 and std[V["MechVent"]] == 1

    def test_set_b_counts_agree_with_readme(self):
        records, labels, stats = pn.read_set(REAL_DIR, "b")
        # README: 4000 ICU stays, 568 in-hospital deaths.
        assert len(records) == len(labels) == stats["records"] == 4000
        assert int(labels.sum()) == stats["deaths"] == 568
        assert stats["record_files"] == 4000 and stats["empty_records"] == 0
        assert stats["unknown_descriptors"]["ICUType"] == 0
        assert records[0].record_id == 142675
