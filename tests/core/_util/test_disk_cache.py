"""core._util.disk_cache: a private folder of small results kept across processes, and the app's results kept there
(a new server does not compute a run's validation thresholds or OOD references again). The file checks kept
there are tested with the others in tests/core/runs/test_hash_cache.py."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from core._util import disk_cache


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(path))
    return path


def test_a_value_comes_back_under_its_key_and_nothing_under_another(cache):
    k1, k2 = disk_cache.cache_key("t", {"a": 1, "b": [1, 2]}), disk_cache.cache_key("t", {"a": 2, "b": [1, 2]})
    assert k1 != k2 and k1 == disk_cache.cache_key("t", {"b": [1, 2], "a": 1})  # dicts in key order
    disk_cache.put_json("example", k1, {"conv1": 0.25, "fc1": float("nan")})
    got = disk_cache.get_json("example", k1)
    assert got["conv1"] == 0.25 and math.isnan(got["fc1"])
    assert disk_cache.get_json("example", k2) is None
    assert os.stat(cache).st_mode & 0o777 == 0o700


def test_the_code_is_part_of_every_key(cache, monkeypatch):
    k = disk_cache.cache_key("t", 1)
    monkeypatch.setattr(disk_cache, "code_fingerprint", lambda: "another version of core")
    assert disk_cache.cache_key("t", 1) != k


def test_a_damaged_or_oversized_entry_is_a_miss(cache):
    key = disk_cache.cache_key("t")
    disk_cache.put_json("example", key, [1])
    (cache / "example" / f"{key}.json").write_text("{not json")
    assert disk_cache.get_json("example", key) is None
    (cache / "example" / f"{key}.json").write_bytes(b"[" + b"1," * disk_cache.MAX_JSON_BYTES + b"1]")
    assert disk_cache.get_json("example", key) is None


def test_kinds_and_keys_cannot_name_paths(cache):
    for kind, key in (("../x", "0" * 64), ("example", "../../etc/passwd"), ("example", "A" * 64)):
        with pytest.raises(ValueError):
            disk_cache.get_json(kind, key)


def test_off_and_unsafe_folders_are_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv(disk_cache.CACHE_ENV, "off")
    assert disk_cache.cache_dir() is None
    disk_cache.put_json("example", "0" * 64, 1)  # a no-op, not an error
    assert disk_cache.get_json("example", "0" * 64) is None
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others may write what would be believed
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(shared))
    assert disk_cache.cache_dir() is None


def test_a_parent_swapped_for_a_link_after_a_first_use_is_not_followed(tmp_path, monkeypatch):
    """The folder is opened anew at each use, component by component without following a link: a parent replaced
    by a link to a folder of forged entries after the cache was used once is refused, not read (issue 34,
    finding 3; the old code checked the last component once and then opened paths through the link)."""
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(home / "cache"))
    key = disk_cache.cache_key("t")
    disk_cache.put_json("example", key, "genuine")
    disk_cache.put_mark("checked", key)
    assert disk_cache.get_json("example", key) == "genuine" and disk_cache.has_mark("checked", key)
    forged = tmp_path / "forged"
    (forged / "cache" / "example").mkdir(parents=True, mode=0o700)
    (forged / "cache" / "checked").mkdir(mode=0o700)
    (forged / "cache" / "example" / f"{key}.json").write_text('"forged"')
    (forged / "cache" / "checked" / key).write_bytes(b"")
    home.rename(tmp_path / "moved")
    home.symlink_to(forged)
    assert disk_cache.get_json("example", key) is None
    assert not disk_cache.has_mark("checked", key)
    assert disk_cache.cache_dir() is None


def test_a_parent_others_may_write_or_an_entry_that_is_a_link_is_not_used(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # not sticky: others could rename the cache folder away and put theirs in its place
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(shared / "cache"))
    assert disk_cache.cache_dir() is None
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # as /tmp: others cannot rename what they do not own
    monkeypatch.setenv(disk_cache.CACHE_ENV, str(sticky / "cache"))
    assert disk_cache.cache_dir() == sticky / "cache"
    key = disk_cache.cache_key("t")
    disk_cache.put_json("example", key, 1)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("2")
    entry = sticky / "cache" / "example" / f"{key}.json"
    entry.unlink()
    entry.symlink_to(elsewhere)
    assert disk_cache.get_json("example", key) is None


def test_the_app_computes_a_runs_validation_thresholds_once_across_server_starts(tiny_run, cache, monkeypatch):
    import streamlit as st

    from app_ui import cache as loaders
    from app_ui.selection import stamp
    from core.evaluation import verdict

    path, s = str(tiny_run), stamp(str(tiny_run))
    st.cache_data.clear()
    first = loaders._validation_thresholds(path, s, "pca", "dwknn", 20)
    assert first and set(first) == {"conv2", "fc1"}
    calls = []
    real = verdict.validation_thresholds
    monkeypatch.setattr(verdict, "validation_thresholds", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    st.cache_data.clear()  # a new server
    again = loaders._validation_thresholds(path, s, "pca", "dwknn", 20)
    assert calls == [] and again == pytest.approx(first, nan_ok=True)
    other = loaders._validation_thresholds(path, s, "pca", "dwknn", 5)  # another setting: computed
    assert calls == [1] and other == pytest.approx(real(loaders._rundata(path, s), "pca", "dwknn", 5), nan_ok=True)
    for entry in (cache / "thresholds").iterdir():  # a damaged entry (a layer missing) is computed again
        entry.write_text('{"conv2": 0.5}')
    st.cache_data.clear()
    assert loaders._validation_thresholds(path, s, "pca", "dwknn", 20) == pytest.approx(first, nan_ok=True)
    assert len(calls) == 2


def test_ood_references_come_back_equal_from_json_and_a_foreign_entry_is_a_miss(tiny_run):
    from core.evaluation import ood
    from core.evaluation.rundata import RunData

    data = RunData(tiny_run, verify=False)
    refs = ood.references(data, data.layers, "pca", 20)
    back = ood.references_from_json(json.loads(json.dumps(ood.references_to_json(refs))), data.layers, "pca", 20)
    for la in data.layers:
        assert back[la].distances.dtype == refs[la].distances.dtype
        np.testing.assert_array_equal(back[la].distances, refs[la].distances)
        assert (back[la].limit, back[la].limit_percentile, back[la].k) == (refs[la].limit, refs[la].limit_percentile, 20)
    value = ood.references_to_json(refs)
    assert ood.references_from_json(value, data.layers, "pca", 5) is None  # another k
    assert ood.references_from_json(value, data.layers[:1], "pca", 20) is None  # another set of layers
    value[data.layers[0]]["distances"][0] = "1e9"
    assert ood.references_from_json(value, data.layers, "pca", 20) is None
    assert ood.references_from_json([1, 2], data.layers, "pca", 20) is None


def test_the_app_reads_a_runs_ood_references_once_across_server_starts(tiny_run, cache, monkeypatch):
    import streamlit as st

    from app_ui import cache as loaders
    from app_ui.selection import stamp
    from core.evaluation import ood

    path, s = str(tiny_run), stamp(str(tiny_run))
    st.cache_resource.clear()
    first = loaders._ood_references(path, s, "pca", 20)
    calls = []
    real = ood.references
    monkeypatch.setattr(ood, "references", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    st.cache_resource.clear()  # a new server
    again = loaders._ood_references(path, s, "pca", 20)
    assert calls == [] and set(again) == set(first)
    for la in first:
        np.testing.assert_array_equal(again[la].distances, first[la].distances)
        assert again[la].limit == first[la].limit
