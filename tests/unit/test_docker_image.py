"""Which libraries go into the anvil image: ``ldd``'s output read into paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from errors import NodeStartError
from nodes.docker.image import parse_ldd

ANVIL = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")

# `ldd` of anvil 1.7.1 here (Debian 12, glibc 2.36).
LDD_ANVIL = """\
\tlinux-vdso.so.1 (0x00007f22288d7000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f22288a6000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f2225f20000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2225d3e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f22288d9000)
"""


def test_every_library_and_the_loader_but_not_the_vdso() -> None:
    assert parse_ldd(LDD_ANVIL, ANVIL) == [
        Path("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
        Path("/lib/x86_64-linux-gnu/libm.so.6"),
        Path("/lib/x86_64-linux-gnu/libc.so.6"),
        Path("/lib64/ld-linux-x86-64.so.2"),  # the dynamic loader: without it nothing runs FROM scratch
    ]


def test_a_missing_library_is_a_clear_error() -> None:
    missing = LDD_ANVIL.replace("libgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f22288a6000)", "libgcc_s.so.1 => not found")
    with pytest.raises(NodeStartError, match=r"anvil needs a library this machine lacks: libgcc_s\.so\.1 => not found"):
        parse_ldd(missing, ANVIL)


def test_a_static_binary_lists_nothing() -> None:
    assert parse_ldd("\tstatically linked\n", ANVIL) == []
