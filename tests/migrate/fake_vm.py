"""A SourceVm for tests: RAM a guest thread writes at a set rate, with its own dirty log.

The guest thread writes an 8-byte counter at a random place of a random page,
``rate`` writes a second in 2 ms ticks, and marks the page in the dirty bitmap in
the same critical section as the write (so a read of the log never misses a write
that finished before it). ``pause()`` returns only when no write is in flight and
keeps a copy of RAM at that moment (``paused_ram``). ``guest_write(pfns)`` writes
pages on demand; ``hot_pages`` are written just before each read of the dirty log
while the guest runs (a guest that never settles, deterministically).
"""
import random
import struct
import threading
import time

from pyvmm.mm.layout import PAGE_SIZE

_COUNTER = struct.Struct("<Q")


class FakeVm:
    def __init__(self, pages, rate=0, seed=7, keep_paused_ram=True):
        rng = random.Random(seed)
        self.ram = bytearray(pages * PAGE_SIZE)
        for pfn in range(0, pages, 2):             # odd pages stay zero
            self.ram[pfn * PAGE_SIZE:(pfn + 1) * PAGE_SIZE] = rng.randbytes(PAGE_SIZE)
        self.memory = memoryview(self.ram)
        self.page_count = pages
        self.rate = rate
        self.calls = []
        self.writes = 0
        self.logging = False
        self.paused_ram = None
        self.keep_paused_ram = keep_paused_ram      # False: pause() copies nothing (benchmarks)
        self.devices = {"vcpu0": {"rip": 0xFFFF_FFFF_8100_0000, "rflags": 0x202},
                        "serial": {"lsr": 0x60, "buffer": b"login: "}}
        self.on_save_devices = None
        self.hot_pages = ()
        self.reads = 0
        self._bits = bytearray(-(-pages // 8))
        self._lock = threading.Lock()
        self._running = threading.Event()
        self._running.set()
        self._stop = False
        self._rng = random.Random(seed + 1)
        self._thread = threading.Thread(target=self._guest, daemon=True)
        self._thread.start()

    def _write(self, pfn, offset):
        self.writes += 1
        _COUNTER.pack_into(self.ram, pfn * PAGE_SIZE + offset, self.writes)
        if self.logging:
            self._bits[pfn >> 3] |= 1 << (pfn & 7)

    def _guest(self):
        tick = 0.002
        per_tick = round(self.rate * tick)
        while not self._stop:
            if not self._running.wait(0.05):
                continue
            with self._lock:
                if self._running.is_set():
                    for _ in range(per_tick):
                        self._write(self._rng.randrange(self.page_count),
                                    self._rng.randrange(0, PAGE_SIZE, 8))
            time.sleep(tick)

    def guest_write(self, pfns, offset=0):
        with self._lock:
            for pfn in pfns:
                self._write(pfn, offset)

    def running(self):
        return self._running.is_set()

    def close(self):
        self._stop = True
        self._running.set()
        self._thread.join()

    # --- the SourceVm protocol ---------------------------------------------------------
    def start_dirty_log(self):
        self.calls.append("start_dirty_log")
        with self._lock:
            self.logging = True
            self._bits[:] = bytes(len(self._bits))

    def stop_dirty_log(self):
        self.calls.append("stop_dirty_log")
        self.logging = False

    def read_dirty_log(self):
        self.reads += 1
        if self.running():
            self.guest_write(self.hot_pages, offset=8 * (self.reads % 512))
        with self._lock:
            out = bytes(self._bits)
            self._bits[:] = bytes(len(self._bits))
        return out

    def pause(self):
        self.calls.append("pause")
        self._running.clear()
        with self._lock:                 # the guest thread is outside its write batch
            if self.keep_paused_ram:
                self.paused_ram = bytes(self.ram)

    def resume(self):
        self.calls.append("resume")
        self._running.set()

    def save_devices(self):
        self.calls.append("save_devices")
        if self.on_save_devices is not None:
            self.on_save_devices()
        return self.devices

    def config(self):
        return {"memory_mib": self.page_count * PAGE_SIZE >> 20, "kernel": "bzImage", "vcpus": 1}
