"""The bulk page-table reader returns exactly what ``layer.read(pad=True)`` returns."""
from __future__ import annotations

import gzip

import pytest
from volatility3.framework import contexts
from volatility3.framework.layers import physical
from volatility3.plugins.windows import pslist, vadinfo

from spyeye_plugins.spyeye.pageread import PageTableReader, _physical_reader
from tests.vol_runner import construct


@pytest.fixture(scope="module")
def process_layers(win7_image):
    image, _ = win7_image
    plugin = construct(image, "windows.pslist.PsList")
    kernel = plugin.context.modules[plugin.config["kernel"]]
    layers = []
    for proc in pslist.PsList.list_processes(plugin.context, plugin.config["kernel"]):
        if int(proc.UniqueProcessId) == 4:
            continue
        layer = plugin.context.layers[proc.add_process_layer()]
        vads = [(v.get_start(), v.get_end()) for v in vadinfo.VadInfo.list_vads(proc)]
        layers.append((int(proc.UniqueProcessId), layer, vads))
    return plugin.context, kernel, layers


def test_every_vad_reads_identically_including_scattered_and_paged_out_pages(process_layers, win7_image):
    _, truth = win7_image
    _, _, layers = process_layers
    compared = 0
    for pid, layer, vads in layers:
        reader = PageTableReader(layer)
        for start, end in vads:
            size = min(end + 1 - start, 0x400000)
            assert reader.read(start, size) == layer.read(start, size, pad=True), (pid, hex(start))
            compared += 1
    paged = [p for p in truth["plants"] if p["label"] == "bot-pagedout"]
    assert compared > 100 and paged


def test_unaligned_ranges_and_unmapped_gaps_match(process_layers):
    _, _, layers = process_layers
    pid, layer, vads = next(entry for entry in layers if entry[0] == 3012)
    reader = PageTableReader(layer)
    start = vads[0][0]
    for offset, length in ((0x123, 0x2F01), (0xFFF, 2), (0, 0x40000), (-0x1000, 0x3000)):
        address = start + offset
        assert reader.read(address, length) == layer.read(address, length, pad=True)
    # a range far from any VAD: unmapped tables read as zeros
    assert reader.read(0x7000000000, 0x5000) == bytes(0x5000)
    assert not reader.mapped(0x7000000000, 0x5000)
    assert reader.mapped(start, 0x1000)


def test_paged_out_page_counts_as_mapped_and_reads_as_volatility_does(process_layers, win7_image):
    _, truth = win7_image
    _, _, layers = process_layers
    plant = next(p for p in truth["plants"] if p["label"] == "bot-pagedout")
    layer = next(entry[1] for entry in layers if entry[0] == plant["pid"])
    reader = PageTableReader(layer)
    page = plant["va"] & ~0xFFF
    assert not layer.is_valid(page) and reader.mapped(page, 0x1000)
    assert reader.read(page, 0x1000) == layer.read(page, 0x1000, pad=True) == bytes(0x1000)


def test_kernel_large_and_non_paging_layers(process_layers, win7_image):
    context, kernel, _ = process_layers
    _, truth = win7_image
    layer = context.layers[kernel.layer_name]
    reader = PageTableReader(layer)
    base = truth["kernel_base"]
    assert reader.read(base, 0x3000) == layer.read(base, 0x3000, pad=True)
    physical = context.layers[layer.config["memory_layer"]]
    assert PageTableReader(physical).read(0x1000, 0x2000) == physical.read(0x1000, 0x2000, pad=True)


def test_compressed_image_is_read_through_volatility_not_raw_file(tmp_path, win7_image):
    image, _ = win7_image
    packed = tmp_path / "head.raw.gz"
    raw = image.read_bytes()[:0x40000]
    packed.write_bytes(gzip.compress(raw))
    context = contexts.Context()
    context.config["gz.location"] = packed.as_uri()
    layer = physical.FileLayer(context, "gz", "gz")
    assert _physical_reader(layer)(0x1000, 0x2000) == raw[0x1000:0x3000]
