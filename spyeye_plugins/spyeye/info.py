"""``spyeye.info``: the suite's version and what it can tell about the image."""
from __future__ import annotations

import logging
from typing import Iterator, List, Tuple

from volatility3.framework import exceptions, interfaces, renderers, symbols
from volatility3.framework.configuration import requirements
from volatility3.plugins.windows import info, pslist

from . import SUITE_VERSION, vadwalk
from .output import text_cell

vollog = logging.getLogger(__name__)


class Info(interfaces.plugins.PluginInterface):
    """Shows the SpyEye suite version, the image's OS, bitness and processes."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return vadwalk.kernel_requirements()[:2] + [
            requirements.VersionRequirement(name="info", component=info.Info, version=(2, 0, 0)),
        ]

    def _os_facts(self) -> Iterator[Tuple[str, str]]:
        kernel = self.context.modules[self.config["kernel"]]
        is64 = symbols.symbol_table_is_64bit(context=self.context,
                                             symbol_table_name=kernel.symbol_table_name)
        yield "Suite version", SUITE_VERSION
        yield "Kernel symbols", self.context.symbol_space[kernel.symbol_table_name].config["isf_url"]
        yield "Bitness", "64-bit" if is64 else "32-bit"
        try:
            vers = info.Info.get_version_structure(self.context, self.config["kernel"])
            kuser = info.Info.get_kuser_structure(self.context, self.config["kernel"])
            yield "Windows", f"{kuser.NtMajorVersion}.{kuser.NtMinorVersion} build {vers.MinorVersion}"
            yield "System time", str(kuser.SystemTime.get_time())
        except exceptions.InvalidAddressException as exc:
            vollog.warning("version data unreadable at %#x", exc.invalid_address)
            yield "Windows", "unreadable"

    def _process_facts(self) -> Iterator[Tuple[str, str]]:
        procs = list(pslist.PsList.list_processes(self.context, self.config["kernel"]))
        wow64 = 0
        for proc in procs:
            try:
                wow64 += bool(proc.get_is_wow64())
            except exceptions.InvalidAddressException:
                continue
        yield "Processes (active list)", str(len(procs))
        yield "WoW64 processes", str(wow64)

    def _generator(self):
        for key, value in list(self._os_facts()) + list(self._process_facts()):
            yield 0, (key, text_cell(value))

    def run(self) -> renderers.TreeGrid:
        return renderers.TreeGrid([("Property", str), ("Value", str)], self._generator())
