"""The bulk page-table reader returns exactly what ``layer.read(pad=True)`` returns."""
from __future__ import annotations

import gzip
import random
import struct
from typing import Tuple

import pytest
from volatility3.framework import contexts
from volatility3.framework.layers import intel, physical
from volatility3.plugins.windows import pslist, vadinfo

from spyeye_plugins.spyeye import vadwalk
from spyeye_plugins.spyeye.pageread import PageTableReader, _physical_filler, _raw_file_descriptor
from tests.vol_runner import construct


def _volatility_frames(layer, address: int, length: int):
    return [frame for _, _, mapped, size, _ in layer.mapping(address, length, ignore_errors=True)
            for frame in range(mapped >> 12, (mapped + size - 1 >> 12) + 1)]


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
            assert list(reader.frames(start, size)) == _volatility_frames(layer, start, size)
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
    assert reader.read_mapped(0x7000000000, 0x5000) is None
    assert reader.read_mapped(start, 0x1000) == reader.read(start, 0x1000)


def test_paged_out_page_counts_as_mapped_and_reads_as_volatility_does(process_layers, win7_image):
    _, truth = win7_image
    _, _, layers = process_layers
    plant = next(p for p in truth["plants"] if p["label"] == "bot-pagedout")
    layer = next(entry[1] for entry in layers if entry[0] == plant["pid"])
    reader = PageTableReader(layer)
    page = plant["va"] & ~0xFFF
    assert not layer.is_valid(page) and reader.read_mapped(page, 0x1000) is not None
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
    assert _raw_file_descriptor(physical) is not None       # a raw image is read with os.pread


def test_compressed_image_is_read_through_volatility_not_raw_file(tmp_path, win7_image):
    image, _ = win7_image
    packed = tmp_path / "head.raw.gz"
    raw = image.read_bytes()[:0x40000]
    packed.write_bytes(gzip.compress(raw))
    context = contexts.Context()
    context.config["gz.location"] = packed.as_uri()
    layer = physical.FileLayer(context, "gz", "gz")
    assert _raw_file_descriptor(layer) is None
    out = bytearray(0x2000)
    _physical_filler(layer, None)(memoryview(out), 0x1000)
    assert out == raw[0x1000:0x3000]


def test_in_place_reads_keep_bytes_after_unmapped_megabytes_at_their_offset(process_layers, win7_image):
    _, truth = win7_image
    _, _, layers = process_layers
    (plant,) = [p for p in truth["plants"] if p["label"] == "bot-huge-vad"]
    layer = next(entry[1] for entry in layers if entry[0] == plant["pid"])
    start = plant["vad_start"] - 0x200000                      # two unmapped MiB before the VAD
    data = bytes.fromhex(plant["data"])
    whole = vadwalk.read_range(layer, start, 0x400000)
    assert len(whole) == 0x400000 and whole[plant["va"] - start:][:len(data)] == data
    chunks = list(vadwalk.read_chunks(layer, start, start + 0x3FFFFF, skip_unmapped=False))
    assert b"".join(d[:owned] for _, d, owned in chunks) == whole
    assert [a for a, _, _ in vadwalk.read_chunks(layer, start, start + 0x3FFFFF)] == [plant["vad_start"]]


def _random_tables(cls, rng: random.Random, frames: int = 512) -> Tuple[bytearray, int]:
    """Physical memory with random paging structures of ``cls`` (valid, large, transition,
    prototype, swapped and empty entries); returns (memory, DTB)."""
    memory = bytearray(frames * 0x1000)
    for frame in range(frames):
        memory[frame * 0x1000:frame * 0x1000 + 8] = struct.pack("<Q", frame)   # tell pages apart
    size = struct.calcsize(cls._entry_format)
    nx = 1 << 63 if size == 8 else 0
    free = list(range(16, frames))
    rng.shuffle(free)
    last = len(cls._structure) - 1

    def table(level: int) -> int:
        base = free.pop() * 0x1000
        memory[base:base + 0x1000] = bytes(0x1000)
        _, bits, large = cls._structure[level]
        for index in rng.sample(range(1 << bits), min(1 << bits, 4 if level < last else 40)):
            roll = rng.random()
            if level < last:
                if large and roll < .2:
                    entry = (rng.randrange(frames * 0x1000) & ~((1 << (21 if size == 8 else 22)) - 1)) | 0x81
                elif roll < .3:
                    entry = rng.choice([0x800, 0x400, 0x1E, 0x80 | (5 << 12)])
                else:
                    entry = table(level + 1) | 0x7
            else:
                entry = rng.choice([free[rng.randrange(len(free))] * 0x1000 | 0x7,
                                    rng.randrange(frames, frames * 2) * 0x1000 | 0x7,       # past the image
                                    free[rng.randrange(len(free))] * 0x1000 | 0x7 | nx,
                                    rng.randrange(frames * 2) * 0x1000 | 0x800,      # transition
                                    0x400 | rng.randrange(1 << 20) << 12,            # prototype
                                    0x80 | rng.randrange(1, 1 << 10) << 12])         # swapped
            struct.pack_into(cls._entry_format, memory, base + index * size, entry)
        return base

    if cls is intel.WindowsIntelPAE:                     # 4-entry PDPT, 32-byte aligned
        dtb = free.pop() * 0x1000 + 0x20
        for index in range(4):
            struct.pack_into("<Q", memory, dtb + index * 8, table(1) | 0x1)
        return memory, dtb
    return memory, table(0)


def _random_layer(cls, rng: random.Random, path) -> "intel.Intel":
    """A ``cls`` layer over random paging structures written to ``path``."""
    memory, dtb = _random_tables(cls, rng)
    path.write_bytes(memory)
    context = contexts.Context()
    context.config["phys.location"] = path.as_uri()
    context.layers.add_layer(physical.FileLayer(context, "phys", "phys"))
    context.config["virt.memory_layer"], context.config["virt.page_map_offset"] = "phys", dtb
    layer = cls(context, "virt", "virt")
    context.layers.add_layer(layer)
    return layer


@pytest.mark.parametrize("cls", [intel.WindowsIntel, intel.WindowsIntelPAE, intel.WindowsIntel32e])
def test_random_x86_pae_and_x64_page_tables_read_like_volatility(cls, tmp_path):
    rng = random.Random(cls.__name__)
    for trial in range(3):
        layer = _random_layer(cls, rng, tmp_path / f"{trial}.bin")
        top = layer.maximum_address
        mapped = [m[0] for m in layer.mapping(0, top, ignore_errors=True)][:200]
        assert mapped
        reader = PageTableReader(layer)
        assert reader._frame_mask is not None          # the comprehension path is the one tested
        for address in rng.sample(mapped, min(40, len(mapped))):
            address = max(0, address + rng.randrange(-0x3000, 0x3000))
            length = min(rng.choice([1, 100, 0x1000, 0x5000, 0x40000]), top + 1 - address)
            expected = layer.read(address, length, pad=True)
            assert reader.read(address, length) == expected, (cls.__name__, hex(address), hex(length))
            assert list(reader.frames(address, length)) == _volatility_frames(layer, address, length)
            got = reader.read_mapped(address, length)
            assert got == expected or (got is None and not any(expected))


@pytest.mark.parametrize("cls_name", ["WindowsIntel", "WindowsIntelPAE", "WindowsIntel32e"])
def test_next_mapped_and_absent_agree_with_volatility_page_by_page(cls_name, tmp_path):
    """On random paging structures (valid, large, transition, prototype, swapped entries),
    ``next_mapped`` finds the first page with an entry and ``absent`` lists exactly the pages
    ``layer.is_valid`` refuses; a walk from below the top of the address space stops there."""
    cls = getattr(intel, cls_name)
    rng = random.Random(f"damage:{cls_name}")
    layer = _random_layer(cls, rng, tmp_path / "tables.bin")
    reader = PageTableReader(layer)
    mapped = sorted({offset for offset, *_ in layer.mapping(0, layer.maximum_address, ignore_errors=True)})
    assert mapped
    for address in rng.sample(mapped, min(20, len(mapped))):
        start = max(0, address - rng.randrange(0x40000))
        found = reader.next_mapped(start, layer.maximum_address + 1)
        assert found is not None and found <= address
        assert not reader.absent(found, 1) or reader._walk(found)[0] != 2     # an entry, if not readable
        length = 0x10000
        expected = [page for page in range(start & ~0xFFF, start + length, 0x1000)
                    if not layer.is_valid(max(page, start), 1)]
        got = [page for lo, hi in reader.absent(start, length) for page in range(lo & ~0xFFF, hi, 0x1000)]
        assert got == expected, (hex(start), cls_name)
    top = layer.maximum_address + 1         # a walk from below the top never wraps past it
    below = reader.next_mapped(top - (1 << 30), top << 1)
    assert below is None or below < top
    assert reader.absent(top - 0x1000, 0x3000)[-1][1] == top + 0x2000
