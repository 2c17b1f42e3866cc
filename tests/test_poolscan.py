"""``poolscan``: one pass over memory returns exactly the objects of Volatility's own pool
scans (psscan, thrdscan, mutantscan, netscan), per kind and in their order, on Windows 7
(physical scan) and Windows 10 (kernel-virtual scan, encoded object types)."""
from __future__ import annotations

from typing import List

import pytest
from volatility3.framework.symbols import windows  # noqa: F401  (before the plugins: import order)
from volatility3.plugins.windows import mutantscan, netscan, psscan, thrdscan

from spyeye_plugins.spyeye import poolscan
from tests.vol_runner import construct


def _offsets(objects) -> List[int]:
    return [int(obj.vol.offset) for obj in objects]


@pytest.mark.parametrize("image_fixture", ["win7_image", "win10_image"])
def test_one_pass_returns_each_stock_scan_s_objects_in_order(request, image_fixture):
    image, truth = request.getfixturevalue(image_fixture)
    plugin = construct(image, "windows.netscan.NetScan")
    context, kernel = plugin.context, plugin.config["kernel"]
    pools = poolscan.PoolObjects(context, kernel, ["process", "thread", "mutant", poolscan.NETWORK],
                                 plugin.config_path)
    table = netscan.NetScan.create_netscan_symbol_table(context, kernel, plugin.config_path)
    stock = {
        "process": psscan.PsScan.scan_processes(context, kernel),
        "thread": thrdscan.ThrdScan.scan_threads(context, kernel),
        "mutant": mutantscan.MutantScan.scan_mutants(context, kernel),
        poolscan.NETWORK: netscan.NetScan.scan(context, kernel, table),
    }
    for kind, objects in stock.items():
        assert _offsets(pools.get(kind)) == _offsets(objects), kind
    assert _offsets(pools.get("process")) == sorted(p["eprocess_scan"] for p in truth["processes"])
    assert _offsets(pools.get("thread")) == sorted(t["ethread_scan"] for t in truth["threads"])
    assert len(pools.get(poolscan.NETWORK)) >= len(truth["connections"]) > 0
    assert [m.get_name() for m in pools.get("mutant") if m.get_name()] == [m["name"] for m in truth["mutants"]]


def test_kinds_not_scanned_are_refused(win7_image):
    plugin = construct(win7_image[0], "windows.pslist.PsList")
    pools = poolscan.PoolObjects(plugin.context, plugin.config["kernel"], ["process"])
    assert len(pools.get("process")) >= 1
    with pytest.raises(KeyError, match="thread"):
        pools.get("thread")
