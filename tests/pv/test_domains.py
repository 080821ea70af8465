"""Several PV domains in one pyvmm process (pv/hypervisor.py): one domain 0, guests
scheduled by the credit scheduler, isolation, caps, the balloon, a hostile neighbour."""

import re
from pathlib import Path

import pytest

from pyvmm.errors import ConfigError
from pyvmm.pv import abi
from pyvmm.pv.hypervisor import NOTHING_WAKES, Hypervisor, LinePrefixer, parse_domain_spec

BUILD = Path(__file__).resolve().parents[2] / "guests" / "build"


def guest(kernel, cmdline="", **kw):
    spec = parse_domain_spec(str(BUILD / f"{kernel}.elf"), **kw)
    spec.cmdline = cmdline
    return spec


def run(*specs, mmu="ept"):
    out = []
    host = Hypervisor(specs, mmu=mmu, console=out.append)
    results = host.run()
    lines = b"".join(out).decode().splitlines()
    return host, results, lines


def value(lines, prefix):
    """The number after ``prefix`` in the console lines."""
    for line in lines:
        if line.startswith(prefix):
            return int(line[len(prefix):].split()[0])
    raise AssertionError(f"no line starts with {prefix!r} in {lines}")


def test_domain_spec_parses_options_and_keeps_commas_in_cmdline():
    spec = parse_domain_spec("k.elf,name=web,memory=32M,weight=512,cap=50,cmdline=a=1,b=2 c")
    assert (spec.kernel, spec.name, spec.memory, spec.weight, spec.cap, spec.cmdline) == \
        ("k.elf", "web", "32M", 512, 50, "a=1,b=2 c")
    for bad, what in (("k.elf,weight=heavy", "weight='heavy'"), ("cap=5", "kernel's path"),
                      ("k.elf,name=a,name=b", "given twice"), ("k.elf,memory=", "memory= is empty")):
        with pytest.raises(ConfigError, match=re.escape(what)):
            parse_domain_spec(bad)


def test_console_lines_are_prefixed_whole():
    out = []
    write = LinePrefixer("d1: ", out.append)
    write(b"hel")
    write(b"lo\nwor")
    write(b"ld\n")
    write(b"tail")
    write.flush()
    assert b"".join(out) == b"d1: hello\nd1: world\nd1: tail\n"


def test_two_domains_share_domain_0_and_run_to_their_ends():
    host, results, lines = run(guest("pvballoon", name="b1"), guest("pvballoon", name="b2"))
    assert [(r.domid, r.name, r.status) for r in results.values()] == [(1, "b1", 0), (2, "b2", 0)]
    for name in ("b1", "b2"):
        assert f"{name}: pvballoon: gave back 16 pages and took them again; 15/15 checks passed" in lines
    assert len(host.dom0.domains) == 1                 # both destroyed when they stopped
    stats = host.scheduler.stats()
    assert [d.domid for d in stats.domains] == [1, 2] and all(d.slices for d in stats.domains)
    assert "domain 2 (b2):" in host.stats()


def test_interdomain_event_between_guests_wakes_the_blocked_one():
    host = Hypervisor([guest("pvballoon"), guest("pvballoon")], console=lambda data: None)
    try:
        one, two = host.machines[1].pv.guest, host.machines[2].pv.guest
        port2 = two.evtchn.alloc_unbound(abi.DOMID_SELF, 1)
        port1 = one.evtchn.bind_interdomain(2, port2)
        entry = host.entries[2]
        entry.vcpu.halted = True                            # as after SCHEDOP_block
        host.scheduler._entries[id(entry)].state = "blocked"
        two.evtchn.unmask(port2)
        two.shared_info()[abi.vcpu_info.offsetof("evtchn_upcall_mask")] = 0
        one.evtchn.send(port1)
        assert two.evtchn.is_pending(port2)
        assert host.scheduler.priority(entry) == "BOOST"    # woken, ahead of the others
    finally:
        host.close()


def test_a_spinning_domain_does_not_starve_a_timer_domain():
    host, results, lines = run(guest("pvticks", "ticks=25 period_ms=10 late_us=10000", name="ticks"),
                               guest("pvspin", "ms=400", name="spin", weight=512))
    assert results[1].status == 0, lines                # every tick came, mean lateness < a period
    assert value(lines, "ticks: pvticks: ticks ") == 25
    assert value(lines, "ticks: pvticks: mean lateness us ") < 10000
    assert results[2].status == 0
    ticks, spin = host.scheduler.stats().domains
    assert spin.ns_run > 4 * ticks.ns_run               # the hog had the CPU the rest of the time
    assert ticks.boosts >= 25                           # each timer wake-up was BOOSTed


def test_a_capped_domain_gets_its_cap_even_with_an_idle_host():
    host, results, lines = run(guest("pvspin", "ms=300", cap=25))
    assert results[1].status == 0
    stats = host.scheduler.stats()
    share = stats.domains[0].ns_run / stats.elapsed_ns
    assert 0.1 < share < 0.35, host.stats()
    assert stats.domains[0].parked_periods >= 5


def test_balloon_frames_leave_the_ept_and_come_back():
    host, results, lines = run(guest("pvballoon"))
    assert results[1].status == 0, lines
    assert "pvballoon: gave back 16 pages and took them again; 15/15 checks passed" in lines
    assert not any(line.startswith("FAIL") for line in lines)


def test_reading_a_ballooned_out_frame_stops_only_that_domain():
    host, results, lines = run(guest("pvballoon", "touch=1", name="balloon"),
                               guest("pvticks", "ticks=10 period_ms=5 late_us=5000", name="ticks"))
    assert results[1].status != 0
    assert re.match(r"EPT violation: read at guest-physical 0x[0-9a-f]+", results[1].reason), results[1].reason
    assert "balloon: pvballoon: reading a released frame" in lines
    assert not any("should have stopped" in line for line in lines)
    assert results[2].status == 0 and value(lines, "ticks: pvticks: ticks ") == 10


def test_a_hostile_domain_cannot_disturb_its_neighbour():
    host, results, lines = run(guest("pvhostile", "rounds=3", name="evil"),
                               guest("pvticks", "ticks=15 period_ms=10 late_us=10000", name="good"))
    assert value(lines, "evil: pvhostile: calls that succeeded ") == 0
    assert value(lines, "evil: pvhostile: hostile calls ") > 1000
    assert results[1].status == 0
    good = [line for line in lines if line.startswith("good: ")]
    assert "good: pvticks: ticks 15" in good and "good: ok mean_lateness_below_limit" in good
    assert results[2].status == 0


def test_domains_that_nothing_can_wake_are_stopped():
    host = Hypervisor([guest("pvballoon")], console=lambda data: None)
    try:
        entry = host.entries[1]
        host.scheduler._waiter.wait(None)                  # the idle scheduler with no timer anywhere
        assert entry.vcpu.stopped and entry.vcpu.reason == NOTHING_WAKES
    finally:
        host.close()


def test_boot_domains_reports_each_domain_and_the_first_failure(capsys):
    from pyvmm.pv.hypervisor import boot_domains
    code = boot_domains([guest("pvballoon", name="ok"), guest("pvballoon", "touch=1", name="bad")], stats=True)
    err = capsys.readouterr().err
    assert code == 1
    assert "pyvmm: domain 1 (ok): guest powered off (SCHEDOP_shutdown poweroff)" in err
    assert re.search(r"pyvmm: domain 2 \(bad\): status 1: EPT violation", err)
    assert "domain weight" in err and "domain 2 (bad):" in err
    assert boot_domains([guest("no-such-kernel")]) == 2


@pytest.mark.skipif(__import__("shutil").which("qemu-img") is None, reason="needs qemu-img (qemu-utils)")
def test_each_domain_gets_its_own_disks_from_domain_0(tmp_path):
    """Two blkfront domains, a raw and a qcow2 disk, one blkback each in the shared domain
    0: both guests' checks pass and qemu-img finds each one's pattern in its own file only."""
    import subprocess

    from pyvmm.devices.block.pattern import SECTOR_SIZE, pattern
    disks = {}
    for name, fmt in (("r", "raw"), ("q", "qcow2")):
        disks[name] = tmp_path / f"{name}.{fmt}"
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(disks[name]), "4M"], check=True)
    spec = parse_domain_spec(f"{BUILD / 'blkfront.elf'},name=r,disk={disks['r']},"
                             f"cmdline=start=8 sectors=64 seed=3")
    other = parse_domain_spec(f"{BUILD / 'blkfront.elf'},name=q,disk={disks['q']},format=qcow2,"
                              f"cmdline=start=16 sectors=32 seed=5")
    assert (spec.disks, other.disks) == ([str(disks["r"])], [f"{disks['q']},format=qcow2"])
    host, results, lines = run(spec, other)
    assert [r.status for r in results.values()] == [0, 0], lines
    for name in ("r", "q"):
        assert any(line.startswith(f"{name}: blkfront: ") and line.endswith("checks passed") for line in lines), lines
    for name, fmt, start, count, seed in (("r", "raw", 8, 64, 3), ("q", "qcow2", 16, 32, 5)):
        raw = tmp_path / f"{name}.out"
        subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(disks[name]), str(raw)], check=True)
        data = raw.read_bytes()
        written = data[start * SECTOR_SIZE:(start + count) * SECTOR_SIZE]
        kept = pattern(seed, start, count)
        # the guest discards the last sectors of its range; the rest is its pattern
        assert written[:len(kept) - 16 * SECTOR_SIZE] == kept[:len(kept) - 16 * SECTOR_SIZE]
        assert data[:start * SECTOR_SIZE] == bytes(start * SECTOR_SIZE)
