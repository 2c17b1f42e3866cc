"""Bulk virtual reads for Intel paging layers, one page table at a time.

``layer.read(address, length, pad=True)`` translates every 4 KiB page on its
own (four table look-ups and several Python calls per page), which dominates
the cost of scanning process memory.  :class:`PageTableReader` walks the same
tables with the layer's own rules (``_structure``, ``_page_is_valid``,
``_get_valid_table``, ``_pte_pfn``) but decodes a whole leaf table at once and
reads each physically contiguous run with one call.  Entries it does not
handle itself (non-zero invalid entries: swapped, prototype) go back to
``layer.read``, so the bytes returned are the bytes ``layer.read(pad=True)``
returns.  Layers that are not Intel paging layers are read with ``layer.read``.

Every walk over a range (reads, frame lists, :meth:`PageTableReader.next_mapped`,
:meth:`PageTableReader.absent`) skips an absent entry at the highest level it is absent
(512 GiB, 1 GiB or 2 MiB at once on x64) and stops at the top of the layer's address
space (2^48 on x64, where table indices would wrap), so its cost follows the tables that
exist, not the size of the range.
"""
from __future__ import annotations

import functools
import io
import os
import struct
from typing import Callable, Iterator, List, Optional, Tuple

from volatility3.framework import interfaces
from volatility3.framework.layers import intel, physical

_NEEDED = ("_structure", "_initial_entry", "_initial_position", "_index_shift",
           "_entry_format", "_entry_size", "_maxphyaddr", "_get_valid_table",
           "_page_is_valid", "_pte_pfn", "_PAGE_PSE", "_PAGE_PAT_LARGE", "_base_layer",
           "maximum_address")

# what one step of the walk found for the region it covers
_LEAF, _LARGE, _EMPTY, _DELEGATE = range(4)


class PageTableReader:
    """``read(address, length)`` with ``layer.read(..., pad=True)`` semantics."""

    def __init__(self, layer: interfaces.layers.DataLayerInterface) -> None:
        self._layer = layer
        self._fast = isinstance(layer, intel.Intel) and all(hasattr(layer, a) for a in _NEEDED)
        if self._fast:
            physical_layer = layer.context.layers[layer._base_layer]
            fileno = _raw_file_descriptor(physical_layer)
            self._fill_physical = _physical_filler(physical_layer, fileno)
            self._preadv = functools.partial(os.preadv, fileno) \
                if fileno is not None and hasattr(os, "preadv") else None
            self._limit = physical_layer.maximum_address + 1
            count = layer.page_size // layer._entry_size
            self._unpack: Callable[[bytes], Tuple[int, ...]] = struct.Struct(
                f"<{count}{layer._entry_format[-1]}").unpack
            self._tables: dict = {}
            # a present entry is valid and its frame address a plain mask, unless the layer
            # redefines _pte_pfn or _page_is_valid (Linux's, say): then entries go one at a time
            plain = type(layer)._pte_pfn is intel.Intel._pte_pfn and type(layer)._page_is_valid in (
                intel.Intel._page_is_valid, intel.WindowsMixin._page_is_valid)
            self._frame_mask = ((1 << layer._maxphyaddr) - 1) & ~(layer.page_size - 1) if plain else None
            # an invalid upper-level entry reads as zeros unless a swap layer can resolve it
            self._swap = bool(layer.config.get("swap_layers", False)) and bool(
                layer.config.get("swap_layers.number_of_elements", 0))
            self._span = layer.maximum_address + 1   # 2^48 on x64: indices wrap past each multiple

    def read(self, address: int, length: int) -> bytes:
        """``length`` bytes at ``address``; unreadable pages read as zeros."""
        return self._read(address, length)[0]

    def read_mapped(self, address: int, length: int) -> Optional[bytes]:
        """As :meth:`read`, but None when no page of the range has a page-table entry
        (reserved memory: nothing to read), found in the same walk."""
        data, mapped = self._read(address, length)
        return data if mapped else None

    def _read(self, address: int, length: int) -> Tuple[bytes, bool]:
        """The bytes, and whether any page of the range has a page-table entry."""
        if not self._fast:
            return self._layer.read(address, length, pad=True), True
        runs: List[List[int]] = []              # [output offset, physical address, length]
        pieces: List[Tuple[int, bytes]] = []    # (output offset, bytes the layer itself read)
        for kind, value, bits, position, stop in self._regions(address, address + length):
            if kind == _LEAF and self._any_entry(value, position, stop):
                self._leaf_runs(value, position, stop, address, pieces, runs)
            elif kind == _LARGE:
                frame = (self._layer._pte_pfn(value) << self._layer.page_shift) \
                    | (position & ((1 << bits) - 1))
                _add_run(runs, position - address, frame, stop - position)
            elif kind == _DELEGATE:
                pieces.append((position - address, self._layer.read(position, stop - position, pad=True)))
        if not runs and not pieces:
            return bytes(length), False     # huge reserved VADs are mostly this: no buffer to fill
        out = bytearray(length)
        for offset, data in pieces:
            out[offset:offset + len(data)] = data
        view, fill, preadv, limit = memoryview(out), self._fill_physical, self._preadv, self._limit
        for offset, frame_address, size in runs:
            if preadv is not None and frame_address + size <= limit:     # the common case, inlined
                preadv([view[offset:offset + size]], frame_address)
            else:
                fill(view[offset:offset + size], frame_address)
        return bytes(out), True

    def _any_entry(self, entries: Tuple[int, ...], start: int, stop: int) -> bool:
        """Whether any page of [start, stop) (inside one leaf table) has a non-zero entry."""
        shift, mask = self._layer.page_shift, len(entries) - 1
        return any(entries[(start >> shift) & mask:(((stop - 1) >> shift) & mask) + 1])

    def frames(self, address: int, length: int) -> Iterator[int]:
        """Physical frame number of each readable page in the range (what
        ``layer.mapping(..., ignore_errors=True)`` maps, without a call per page)."""
        if not self._fast:
            for _, _, mapped, size, _ in self._layer.mapping(address, length, ignore_errors=True):
                yield from range(mapped >> 12, (mapped + size - 1 >> 12) + 1)
            return
        layer, limit = self._layer, self._layer.context.layers[self._layer._base_layer].maximum_address
        for kind, value, bits, position, stop in self._regions(address, address + length):
            if kind == _LARGE:
                first = (layer._pte_pfn(value) << layer.page_shift | (position & ((1 << bits) - 1))) >> 12
                last = first + ((stop - 1 >> 12) - (position >> 12))
                if (last << 12) + 0xFFF <= limit:       # as Volatility: a run past the image is unmapped
                    yield from range(first, last + 1)
            elif kind == _DELEGATE:
                for _, _, mapped, size, _ in layer.mapping(position, stop - position, ignore_errors=True):
                    yield from range(mapped >> 12, (mapped + size - 1 >> 12) + 1)
            elif kind == _LEAF:
                mask = len(value) - 1
                for page in range(position >> 12, ((stop - 1) >> 12) + 1):
                    entry = value[page & mask]
                    if layer._page_is_valid(entry):
                        frame = layer._pte_pfn(entry)
                        if (frame << 12) + 0xFFF <= limit:
                            yield frame
                    elif entry:
                        for _, _, mapped, size, _ in layer.mapping(page << 12, 0x1000, ignore_errors=True):
                            yield mapped >> 12

    def next_mapped(self, address: int, end: int) -> Optional[int]:
        """The first address in [address, end) whose page has a page-table entry (the
        start of the first such page, or ``address`` itself), None when there is none.
        Absent tables are skipped whole; non-canonical addresses hold nothing."""
        if not self._fast:
            return address if address < end else None
        shift = self._layer.page_shift
        for kind, value, _, position, stop in self._regions(address, end):
            if kind == _EMPTY:
                continue
            if kind != _LEAF:
                return position
            mask = len(value) - 1
            first, last = (position >> shift) & mask, ((stop - 1) >> shift) & mask
            index = next((i for i in range(first, last + 1) if value[i]), None)
            if index is not None:
                return max(position, ((position >> shift) - first + index) << shift)
        return None

    def absent(self, address: int, length: int) -> List[Tuple[int, int]]:
        """Half-open address ranges of the pages in [address, address+length) that cannot
        be read (what ``layer.is_valid`` says page by page), merged; cost per table."""
        out: List[Tuple[int, int]] = []
        end = address + length
        if not self._fast:
            for page in range(address & ~0xFFF, end, 0x1000):
                if not self._layer.is_valid(max(page, address), 1):
                    _add_range(out, max(page, address), min(page + 0x1000, end))
            return out
        layer, size = self._layer, self._layer.page_size
        limit = layer.context.layers[layer._base_layer].maximum_address
        cursor = address
        for kind, value, bits, position, stop in self._regions(address, end):
            cursor = stop
            if kind == _LARGE:
                frame = layer._pte_pfn(value) << layer.page_shift | (position & ((1 << bits) - 1))
                if frame + (stop - position) - 1 > limit:
                    _add_range(out, position, stop)
            elif kind == _LEAF:
                mask = len(value) - 1
                for page in range(position & ~(size - 1), stop, size):
                    entry = value[(page >> layer.page_shift) & mask]
                    readable = ((layer._pte_pfn(entry) << layer.page_shift) + size - 1 <= limit
                                if layer._page_is_valid(entry) else bool(entry) and layer.is_valid(page, 1))
                    if not readable:
                        _add_range(out, max(page, position), min(page + size, stop))
            elif kind == _EMPTY or not layer.is_valid(position, 1):
                _add_range(out, position, stop)
        _add_range(out, cursor, end)
        return out

    def _regions(self, address: int, end: int) -> Iterator[Tuple[int, object, int, int, int]]:
        """``(kind, value, bits, start, stop)`` for each step of the walk over [address,
        end): one per leaf table, large page or absent entry (at its highest level).  Stops
        at the top of the address space ``address`` is in (2^48 for user space on x64; a
        sign-extended kernel address runs to 2^64), where table indices would wrap; an
        invalid upper-level entry is empty unless a swap layer can resolve it."""
        position, top = address, (address // self._span + 1) * self._span
        while position < min(end, top):
            kind, value, bits = self._walk(position)
            stop = min(end, ((position >> bits) + 1) << bits)
            if kind == _DELEGATE and not self._swap:
                kind = _EMPTY
            yield kind, value, bits, position, stop
            position = stop

    def _walk(self, address: int) -> Tuple[int, object, int]:
        """(kind, table entries or entry, log2 of the region size it covers)."""
        layer = self._layer
        position, entry = layer._initial_position, layer._initial_entry
        last = len(layer._structure) - 1
        for level, (_, size, large_page) in enumerate(layer._structure):
            if not layer._page_is_valid(entry):
                return (_EMPTY if entry == 0 else _DELEGATE), entry, position + 1
            base = layer._mask(entry, layer._maxphyaddr - 1, size + layer._index_shift)
            entries = self._entries(base)
            start, position = position, position - size
            if entries is None:
                return _EMPTY, 0, start + 1
            if level == last:
                return _LEAF, entries, start + 1
            entry = entries[layer._mask(address, start, position + 1) >> (position + 1)]
            if large_page and entry & layer._PAGE_PSE:
                if entry & layer._PAGE_PAT_LARGE:
                    entry -= layer._PAGE_PAT_LARGE
                return _LARGE, entry, position + 1
        raise AssertionError("paging structure has no levels")  # pragma: no cover

    def _entries(self, base: int) -> Optional[Tuple[int, ...]]:
        """Decoded entries of the table at ``base`` (None: unreadable or all duplicates)."""
        if base not in self._tables:
            if len(self._tables) > 64:
                self._tables.clear()
            table = self._layer._get_valid_table(base)
            self._tables[base] = None if table is None else self._unpack(table)
        return self._tables[base]

    def _leaf_runs(self, entries: Tuple[int, ...], start: int, stop: int, origin: int,
                   pieces: List[Tuple[int, bytes]], runs: List[List[int]]) -> None:
        """Add the runs of [start, stop) (inside one leaf table) to ``runs``; pages that
        only the layer can read (swapped, prototype) are read now, into ``pieces``."""
        shift, mask = self._layer.page_shift, len(entries) - 1
        first, last = start >> shift, (stop - 1) >> shift
        segment = entries[first & mask:(last & mask) + 1]
        if self._frame_mask is None or not all(entry & 1 or not entry for entry in segment):
            self._leaf_runs_by_page(segment, start, stop, origin, pieces, runs)
            return
        # the common case, in comprehensions (the hot loop): every entry empty or present
        size, frame_mask, count = self._layer.page_size, self._frame_mask, len(segment)
        frames = [entry & frame_mask for entry in segment]
        starts = [k for k in range(count) if segment[k] and (
            k == 0 or not segment[k - 1] or frames[k - 1] + size != frames[k])]
        ends = [k for k in range(count) if segment[k] and (
            k == count - 1 or not segment[k + 1] or frames[k] + size != frames[k + 1])]
        offset = (first << shift) - origin
        new = [[offset + (k << shift), frames[k], (end + 1 - k) << shift] for k, end in zip(starts, ends)]
        if not new:
            return
        head, tail = start & (size - 1), ((last + 1) << shift) - stop
        if head and starts[0] == 0:
            new[0] = [new[0][0] + head, new[0][1] + head, new[0][2] - head]
        if tail and ends[-1] == count - 1:
            new[-1][2] -= tail
        _add_run(runs, *new[0])
        runs.extend(new[1:])

    def _leaf_runs_by_page(self, segment: Tuple[int, ...], start: int, stop: int, origin: int,
                           pieces: List[Tuple[int, bytes]], runs: List[List[int]]) -> None:
        """:meth:`_leaf_runs` one page at a time: entries the layer reads itself, or frames
        that only its ``_pte_pfn`` can decode."""
        layer = self._layer
        page_size, shift = layer.page_size, layer.page_shift
        valid, pfn = layer._page_is_valid, layer._pte_pfn
        position, index = start, 0
        while position < stop:
            page_end = min(stop, (position | (page_size - 1)) + 1)
            entry = segment[index]
            if valid(entry):
                _add_run(runs, position - origin, pfn(entry) << shift | (position & (page_size - 1)),
                         page_end - position)
            elif entry:
                pieces.append((position - origin, layer.read(position, page_end - position, pad=True)))
            position, index = page_end, index + 1


def _physical_filler(layer: interfaces.layers.DataLayerInterface,
                     fileno: Optional[int]) -> Callable[[memoryview, int], None]:
    """``fill(view, address)``: the bytes at ``address`` into the zeroed buffer ``view``
    (what lies outside the layer stays zero).  A raw image file is read straight into the
    buffer with ``os.preadv`` or ``os.pread`` (no seek, no lock: the file is only read);
    anything else (a compressed or remote image, another layer type, a system without
    ``pread``) goes through ``layer.read``.  ``fileno``: :func:`_raw_file_descriptor` of it."""
    if fileno is not None and hasattr(os, "preadv"):
        limit = layer.maximum_address + 1

        def preadv_file(view: memoryview, address: int) -> None:
            if address < limit:
                os.preadv(fileno, [view[:max(0, min(len(view), limit - address))]], address)
        return preadv_file
    if fileno is not None and hasattr(os, "pread"):
        limit = layer.maximum_address + 1

        def pread_file(view: memoryview, address: int) -> None:
            if address < limit:
                data = os.pread(fileno, max(0, min(len(view), limit - address)), address)
                view[:len(data)] = data
        return pread_file

    def read_layer(view: memoryview, address: int) -> None:
        size = len(view)
        if layer.is_valid(address, size):
            view[:] = layer.read(address, size, pad=True)
            return
        # partly outside the physical layer: as Volatility's mapping does, a page that is not
        # wholly inside reads as zeros
        position = address
        while position < address + size:
            step = min(address + size, (position | 0xFFF) + 1) - position
            if layer.is_valid(position, step):
                view[position - address:position - address + step] = layer.read(position, step, pad=True)
            position += step
    return read_layer


def _raw_file_descriptor(layer: interfaces.layers.DataLayerInterface) -> Optional[int]:
    """The descriptor of a plain, uncompressed image file behind ``layer``, else None."""
    if type(layer) is not physical.FileLayer:
        return None
    try:
        handle = layer._file
        handle = getattr(handle, "fp", handle)   # file:// URLs come wrapped in urllib's addinfourl
        if not isinstance(handle, (io.BufferedReader, io.FileIO)):
            return None                      # gzip/lzma/bz2 wrappers: fileno() is the compressed file
        fileno = handle.fileno()
        return fileno if os.fstat(fileno).st_size == layer.maximum_address + 1 else None
    except (AttributeError, OSError, ValueError):
        return None


def _add_range(ranges: List[Tuple[int, int]], start: int, end: int) -> None:
    """Append [start, end), merged with the previous range when they touch."""
    if start >= end:
        return
    if ranges and ranges[-1][1] == start:
        ranges[-1] = (ranges[-1][0], end)
    else:
        ranges.append((start, end))


def _add_run(runs: List[List[int]], offset: int, physical: int, size: int) -> None:
    """Append a run, merging it with the previous one when both are contiguous."""
    if runs:
        last = runs[-1]
        if last[0] + last[2] == offset and last[1] + last[2] == physical:
            last[2] += size
            return
    runs.append([offset, physical, size])
