"""The image builder itself: deterministic, scattered, faithful ground truth."""
from __future__ import annotations

import hashlib
import json

from fixtures.build import write_image
from fixtures.scenarios import SCENARIOS


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_scenario_builds_the_same_bytes(tmp_path, win7_image):
    image, truth = write_image(SCENARIOS["spyeye-win7"](), tmp_path)
    assert _digest(image) == _digest(win7_image[0])
    assert json.loads(truth.read_text()) == win7_image[1]


def test_straddling_plants_sit_on_physically_distant_pages(win7_image):
    image, truth = win7_image
    raw = image.read_bytes()
    straddling = [p for p in truth["plants"] if "straddle" in p["label"] and p["resident"]]
    assert len(straddling) >= 3
    for plant in straddling:
        first, second = plant["pages"]
        data = bytes.fromhex(plant["data"])
        assert abs(second["pa"] - first["pa"]) >= 16 << 20
        assert raw[first["pa"]:first["pa"] + len(data)] != data  # a linear scan cannot see it


def test_resident_single_page_plants_are_at_their_physical_address(win7_image):
    image, truth = win7_image
    raw = image.read_bytes()
    singles = [p for p in truth["plants"] if p["resident"] and len(p["pages"]) <= 1]
    assert len(singles) >= 5
    for plant in singles:
        data = bytes.fromhex(plant["data"])
        assert raw[plant["pa"]:plant["pa"] + len(data)] == data


def test_paged_out_plant_is_not_in_the_image(win7_image):
    image, truth = win7_image
    (plant,) = [p for p in truth["plants"] if p["label"] == "bot-pagedout"]
    assert plant["pa"] is None and not plant["resident"]
    assert bytes.fromhex(plant["data"]) not in image.read_bytes()


def test_scenario_has_exited_unlinked_process_closed_socket_and_wow64(win7_image):
    _, truth = win7_image
    exited = [p for p in truth["processes"] if p["exit_time"]]
    assert [(p["name"], p["linked"]) for p in exited] == [("invoice_0311.exe", False)]
    assert {c["pid"] for c in truth["connections"] if c["closed"]} == {2940}
    assert [p["name"] for p in truth["processes"] if p["wow64"]] == ["firefox.exe"]
    shared = [p for p in truth["plants"] if p["label"] == "shared-mapping"]
    assert {p["pid"] for p in shared} == {1484, 2172} and len({p["pa"] for p in shared}) == 1


def test_kernel_layout_comes_from_the_symbol_table(win7_image):
    _, truth = win7_image
    assert truth["pdb"] == {"guid": "53505945594546495854555245000001", "age": 1}
    assert truth["dtb"] == 0x187000
