"""Pin path validation (pure): what may become a bpffs path component."""

from __future__ import annotations

import pytest

from kube_xdp_agent.kernel import PinError
from tests.fakes import FakeKernel
from kube_xdp_agent.kernel.bpffs import (
    INTERFACE_RE,
    interface_of_pin,
    link_pin_name,
    validate_digest12,
    validate_interface,
    validate_map_name,
    validate_program,
)

GOOD_PROGRAMS = ["a", "counter", "drop-udp-9999", "a" * 63, "0abc", "x1-2"]
BAD_PROGRAMS = ["..", ".", "a/b", "../etc", "Upper", "", "ñame", "a\n", "-a", "a-", "a" * 64, "a.b", "a b",
                "a\0b", "staging-x_", None]
BAD_DIGESTS = ["..", "ABCDEF012345", "0123456789a", "0123456789abc", "../../../..", "0123456789a\n", "01234567890g",
               "", "٠١٢٣٤٥٦٧٨٩ab"]
BAD_MAPS = ["..", "a/b", "1abc", "a.b", "a" * 65, "", "ñ", "a\n", "a-b"]


@pytest.mark.parametrize("name", GOOD_PROGRAMS)
def test_good_program_names(name: str) -> None:
    assert validate_program(name) == name


@pytest.mark.parametrize("name", BAD_PROGRAMS, ids=repr)
def test_bad_program_names(name: str) -> None:
    with pytest.raises(PinError):
        validate_program(name)


@pytest.mark.parametrize("digest", BAD_DIGESTS, ids=repr)
def test_bad_digests(digest: str) -> None:
    with pytest.raises(PinError):
        validate_digest12(digest)


@pytest.mark.parametrize("name", BAD_MAPS, ids=repr)
def test_bad_map_names(name: str) -> None:
    with pytest.raises(PinError):
        validate_map_name(name)


def test_good_digest_and_map_names() -> None:
    assert validate_digest12("0123456789ab") == "0123456789ab"
    assert validate_map_name("_x" + "y" * 62) == "_x" + "y" * 62


def test_fake_store_uses_the_layout() -> None:
    kernel = FakeKernel()
    kernel.mount_bpffs("/sys/fs/bpf")
    store = kernel.pin_store("/sys/fs/bpf")
    assert store.prog_path("counter", "0123456789ab") == "/sys/fs/bpf/kube-xdp/counter/0123456789ab/prog"
    assert store.map_path("counter", "0123456789ab", "hits") == "/sys/fs/bpf/kube-xdp/counter/0123456789ab/maps/hits"
    with pytest.raises(PinError):
        store.map_path("counter", "0123456789ab", "../../x")


GOOD_INTERFACES = ["eth0", "eth0.100", "enp3s0f1", "a", "x" * 15, "veth_1-2", "...", "a..b"]
BAD_INTERFACES = [".", "..", "", "x" * 16, "a/b", "eth 0", "eth0\n", "eth+0", "eth:0", "ñ", "a\0b", None]


@pytest.mark.parametrize("name", GOOD_INTERFACES)
def test_link_pin_names_round_trip(name: str) -> None:
    pin = link_pin_name(name)
    assert "." not in pin and interface_of_pin(pin) == name      # bpffs refuses dots: '.' <-> '+'
    assert validate_interface(name) == name


@pytest.mark.parametrize("name", BAD_INTERFACES, ids=repr)
def test_bad_interface_names(name) -> None:
    with pytest.raises(PinError):
        link_pin_name(name)


def test_interface_names_are_the_apis() -> None:
    """What a link pin may be named after is what the API accepts as an interface name."""
    import re

    from kube_xdp_api import spec

    assert f"^{INTERFACE_RE.pattern}$" == spec.INTERFACE_NAME
    assert set(spec.INTERFACE_NAMES_FORBIDDEN) == {".", ".."}
    assert not re.fullmatch(INTERFACE_RE, "+")                    # so '+' can stand for '.'
    assert interface_of_pin("+") is None and interface_of_pin("++") is None and interface_of_pin("a.b") is None


def test_fake_store_link_layout() -> None:
    kernel = FakeKernel()
    kernel.mount_bpffs("/sys/fs/bpf")
    store = kernel.pin_store("/sys/fs/bpf")
    assert store.link_path("web", "eth0.7") == "/sys/fs/bpf/kube-xdp/web/links/eth0+7"
