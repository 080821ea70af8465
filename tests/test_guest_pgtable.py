"""The page-table-heavy guest (guests/pgtable.S) sees what an x86 MMU gives it.

Its workload (4 address spaces, CR3 switches, map/unmap/remap with INVLPG, fork, #PF on
not-present pages, accessed/dirty bits) is modelled here in Python from the description at
the top of pgtable.S: the model knows nothing of page tables, only which frame each page
of each address space maps, so the checksum the guest prints is computed independently.
"""
import re

import pytest

M64 = (1 << 64) - 1
NAS, NPAGES = 4, 16
USER_BASE = 0x80_0000_0000
LARGE_FRAMES = (0x1800000, 0x1A00000)
DATA_POOL = 0xC00000
FORK_MAX = 48
PF_W = 2


class Model:
    """pgtable.S's workload on a model of memory: frames -> {offset: qword}."""

    def __init__(self):
        self.x = 0x9E3779B97F4A7C15
        self.h = 0xCBF29CE484222325
        self.frames = {}                     # frame -> {offset: value}
        self.next_frame = DATA_POOL
        self.pages = [[None] * NPAGES for _ in range(NAS)]   # frame of page p, or None
        self.ad = [[0] * NPAGES for _ in range(NAS)]         # bit 0: accessed, bit 1: dirty
        self.large = [LARGE_FRAMES[0], LARGE_FRAMES[0], LARGE_FRAMES[1], LARGE_FRAMES[1]]
        self.cur = 0
        self.faults = self.forks = 0
        for s in range(NAS):
            for p in range(8):
                self.pages[s][p] = self.alloc()

    def rand(self):
        self.x = (self.x * 6364136223846793005 + 1442695040888963407) & M64
        return self.x >> 33

    def hash(self, v):
        self.h = ((self.h ^ v) * 0x100000001B3) & M64

    def alloc(self):
        frame, self.next_frame = self.next_frame, self.next_frame + 4096
        self.frames[frame] = {}
        return frame

    def ad_summary(self, s):
        return sum(self.ad[s][p] << (2 * p) for p in range(NPAGES))

    def access(self, p, off, write, value=None):
        frame = self.pages[self.cur][p]
        if frame is None:
            self.hash(PF_W if write else 0)
            self.hash(USER_BASE + p * 4096 + off)
            self.faults += 1
            return
        self.ad[self.cur][p] |= 3 if write else 1
        if write:
            self.frames[frame][off] = value
        else:
            self.hash(self.frames[frame].get(off, 0))

    def large_memory(self):
        return self.frames.setdefault(self.large[self.cur], {})

    def switch(self, r):
        self.hash(self.ad_summary(self.cur))
        self.cur = (r >> 4) & 3

    def fork(self, r):
        self.hash(self.ad_summary(self.cur))
        child = (self.cur + 1 + ((r >> 4) & 1) + ((r >> 5) & 1)) & 3
        self.large[child] = self.large[self.cur]
        copies = []
        for frame in self.pages[self.cur]:
            if frame is None:
                copies.append(None)
            else:
                new = self.alloc()
                self.frames[new] = dict(self.frames[frame])
                copies.append(new)
        self.pages[child], self.ad[child] = copies, [0] * NPAGES
        self.cur = child
        self.forks += 1

    def run(self, iters):
        for _ in range(iters):
            r = self.rand()
            op, p, off = r & 15, (r >> 4) & 15, ((r >> 8) & 511) * 8
            if op <= 5:
                self.rand()
                self.access(p, off, write=True, value=self.x)
            elif op <= 10:
                self.access(p, off, write=False)
            elif op == 11:
                self.rand()
                mem = self.large_memory()
                mem[((r >> 4) & 0x3FFFF) * 8] = self.x
                self.hash(mem.get(((r >> 13) & 0x3FFFF) * 8, 0))
            elif op == 12:
                self.pages[self.cur][p] = None
                self.ad[self.cur][p] = 0
            elif op == 13:
                q = (r >> 18) & 15
                alias = (r >> 17) & 1 and self.pages[self.cur][q] is not None
                self.pages[self.cur][p] = self.pages[self.cur][q] if alias else self.alloc()
                self.ad[self.cur][p] = 0
            elif op == 15 and self.forks < FORK_MAX:
                self.fork(r)
            else:
                self.switch(r)
        for s in range(NAS):
            self.cur = s
            self.hash(self.ad_summary(s))
            for p, frame in enumerate(self.pages[s]):
                if frame is not None:
                    for off in range(0, 4096, 8):
                        self.hash(self.frames[frame].get(off, 0))
        return self


def summary(text):
    m = re.search(r"^pgtable: (\d+) ops, (\d+) page faults, (\d+) forks, (\d+) frames$", text, re.M)
    c = re.search(r"^pgtable: checksum (0x[0-9a-f]+)$", text, re.M)
    assert m and c, text[-2000:]
    return tuple(int(g) for g in m.groups()) + (int(c.group(1), 16),)


@pytest.mark.parametrize("iters", [0, 300])
def test_checksum_matches_python_model(boot, iters):
    status, reason, text, m = boot("pgtable", cmdline=f"iters={iters} skip=beyond_ram")
    assert [line for line in text.splitlines() if line.startswith("FAIL")] == []
    assert status == 0, reason
    model = Model().run(iters)
    frames = (model.next_frame - DATA_POOL) // 4096
    assert summary(text) == (iters, model.faults, model.forks, frames, model.h)


def test_default_run_exercises_faults_forks_and_all_checks(boot):
    status, reason, text, m = boot("pgtable", cmdline="skip=beyond_ram")
    assert status == 0, reason
    iters, faults, forks, frames, checksum = summary(text)
    assert iters == 20000 and faults > 1000 and forks == FORK_MAX and frames > 1000
    model = Model().run(iters)
    assert (faults, forks, checksum) == (model.faults, model.forks, model.h)
    assert re.search(r"^pgtable: (\d+) checks passed$", text, re.M).group(1) == "35"
    for check in ("ro_page_write_pf_error_code", "ro_page_accessed_not_dirty", "not_present_write_cr2",
                  "reserved_address_bit_read_pf_error_code", "pml4e_ps_reserved_pf_error_code",
                  "large_pde_bit13_reserved_pf_error_code", "selfmap_reads_pte_5",
                  "selfmap_written_pte_maps_page"):
        assert f"ok {check}\n" in text


def test_output_is_stable_across_runs(boot):
    first = boot("pgtable", cmdline="iters=2000 skip=beyond_ram")[2]
    second = boot("pgtable", cmdline="iters=2000 skip=beyond_ram")[2]
    assert first == second


def test_too_little_ram_is_reported_by_the_guest(boot):
    status, reason, text, m = boot("pgtable", memory="16M")
    assert "FAIL ram_at_least_32_mib" in text and status == 3


@pytest.mark.parametrize("mmu", ["ept", "shadow"])
def test_beyond_ram_behaves_like_a_pc(boot, mmu):
    """Outside RAM a PC reads all ones: a page table there has every reserved bit set
    (#PF with RSVD), a data page reads ~0 and swallows writes. EPT maps such pages to
    one VMM page of all ones (writes single-stepped into a scratch page); shadow paging
    walks the guest's tables itself and does the same. The VM runs on to the end."""
    status, reason, text, m = boot("pgtable", cmdline="iters=100", mmu=mmu, memory="32M")
    assert status == 0, reason
    assert "pgtable: page table beyond RAM: #PF error 0x9\n" in text
    assert "ok page_table_beyond_ram_cr2" in text
    assert "pgtable: beyond RAM: read 0xffffffffffffffff\n" in text
    assert "pgtable: beyond RAM: write done\n" in text and "FAIL" not in text
