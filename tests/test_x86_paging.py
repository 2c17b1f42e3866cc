"""``fixtures.memory.AddressSpace32`` (x86 non-PAE paging) read back through Volatility's own
``WindowsIntel`` layer and its DTB test, without building an image."""
from __future__ import annotations

import pytest
from volatility3.framework import contexts, exceptions
from volatility3.framework.automagic.windows import DtbSelfRef32bit, DtbSelfRefPae
from volatility3.framework.layers.intel import WindowsIntel
from volatility3.framework.layers.physical import BufferDataLayer

from fixtures.memory import AddressSpace32, FrameAllocator, PhysicalMemory

SIZE = 8 << 20
DTB = 0x185000


def _layer(phys: PhysicalMemory, dtb: int, name: str, ctx=None):
    ctx = ctx or contexts.Context()
    if "phys" not in ctx.layers:
        ctx.add_layer(BufferDataLayer(ctx, "phys", "phys", bytes(phys.data)))
    ctx.config[f"{name}.memory_layer"] = "phys"
    ctx.config[f"{name}.page_map_offset"] = dtb
    layer = WindowsIntel(ctx, name, name)
    ctx.add_layer(layer)
    return ctx, layer


@pytest.fixture(scope="module")
def spaces():
    phys = PhysicalMemory(SIZE)
    frames = FrameAllocator(SIZE, seed=14, low=2 << 20)   # above the DTB
    kernel = AddressSpace32(phys, frames, pml4=DTB)
    process = AddressSpace32(phys, frames, kernel=kernel)
    pages = {  # va -> (space, pa)
        0x00400000: (process, process.map_new(0x00400000, writable=False)),
        0x7FFDF000: (process, process.map_new(0x7FFDF000)),
        0x82A4F000: (kernel, kernel.map_new(0x82A4F000)),
        0x84000000: (kernel, kernel.map_new(0x84000000)),   # a kernel table made after the process
        0xFFDF0000: (kernel, kernel.map_new(0xFFDF0000)),
    }
    process.page_out(0x00401000, 0x1234)
    for va, (space, _) in pages.items():
        space.write(va + 0x10, va.to_bytes(4, "little"))
    return phys, kernel, process, pages


def test_volatility_translates_every_mapped_page(spaces):
    phys, kernel, process, pages = spaces
    ctx, klayer = _layer(phys, kernel.pml4, "kernel")
    _, player = _layer(phys, process.pml4, "process", ctx)
    for va, (space, pa) in pages.items():
        layers = [player] if space is process else [klayer, player]   # the kernel half is shared
        for layer in layers:
            assert layer.translate(va + 0x10) == (pa + 0x10, "phys")
            assert layer.read(va + 0x10, 4) == va.to_bytes(4, "little")
    with pytest.raises(exceptions.InvalidAddressException):
        klayer.translate(0x00400000)                 # user pages are the process's own


def test_self_map_at_0x300_and_the_page_directory_at_0xc0300000(spaces):
    phys, kernel, process, _ = spaces
    for space, name in ((kernel, "k"), (process, "p")):
        _, layer = _layer(phys, space.pml4, name)
        assert layer.translate(0xC0300000) == (space.pml4, "phys")
        assert layer.read(0xC0300000 + 0x300 * 4, 4) == (space.pml4 | 0x63).to_bytes(4, "little")


def test_paged_out_pte_is_a_swapped_page(spaces):
    phys, _, process, _ = spaces
    _, layer = _layer(phys, process.pml4, "p")
    with pytest.raises(exceptions.SwappedInvalidAddressException) as raised:
        layer.translate(0x00401000)
    assert raised.value.swap_offset == 0x1234 << 12


def test_the_kernel_directory_passes_volatility_s_x86_dtb_test_and_not_the_pae_one(spaces):
    phys, kernel, _, _ = spaces
    data = bytes(phys.data[kernel.pml4 - 0x4000:kernel.pml4 + 0x1000])
    page = 0x4000
    assert DtbSelfRef32bit()(data, kernel.pml4 - 0x4000, page) == (kernel.pml4, 0x300 * 4)
    assert DtbSelfRefPae()(data, kernel.pml4 - 0x4000, page) is None
