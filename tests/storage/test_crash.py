"""Kill -9 in the middle of qcow2 writes: qemu-img check finds no corruption (leaks
allowed) and every write flushed before the kill is there."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pyvmm.storage import create_image, open_image
from pyvmm.storage.qcow2.check import check_qcow2

from .conftest import HAVE_QEMU, pattern, qemu_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REGION = 24576
REGIONS = 600
SIZE = REGION * REGIONS


def plan(seed):
    """Op i: write a piece of region order[i]; every 5th op first discards an earlier region."""
    rng = random.Random(seed)
    order = list(range(REGIONS))
    rng.shuffle(order)
    ops = []
    for i, region in enumerate(order):
        if i % 5 == 4:
            ops.append(("discard", order[i - 3] * REGION, REGION, i))
        off = region * REGION + rng.randrange(0, 4096)
        ops.append(("write", off, rng.randrange(1, REGION - 4096), i))
    return ops


WRITER = """
import sys
sys.path.insert(0, {root!r})
from pyvmm.storage.qcow2.image import Qcow2Image
from tests.storage.test_crash import plan
from tests.storage.conftest import pattern
img = Qcow2Image({path!r}, cache_bytes=3 * 4096)
for kind, off, n, i in plan({seed}):
    if kind == "write":
        img.write(off, pattern(off, n))
    else:
        img.discard(off, n)
    if i % 7 == 6 and kind == "write":
        img.flush()
        print(i, flush=True)
print("done", flush=True)
"""


def _run_and_kill(path, seed, flushes):
    child = subprocess.Popen([sys.executable, "-c", WRITER.format(root=ROOT, path=str(path), seed=seed)],
                             stdout=subprocess.PIPE, text=True)
    last = -1
    try:
        for _ in range(flushes):
            line = child.stdout.readline().strip()
            if not line or line == "done":
                break
            last = int(line)
        time.sleep(random.Random(seed).uniform(0, 0.02))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    for line in child.stdout:            # flushes reported before the kill landed
        if line.strip().isdigit():
            last = int(line)
    return last


def _verify(path, seed, last):
    ops = plan(seed)
    final = {}
    for kind, off, n, i in ops:
        region = off // REGION
        final.setdefault(region, []).append((kind, off, n, i))
    with open_image(path, readonly=True) as img:
        for region, history in final.items():
            start = region * REGION
            data = img.read(start, REGION)
            done = [h for h in history if h[3] <= last]
            later = [h for h in history if h[3] > last]
            if not done or later:
                continue                  # unflushed: may or may not be there
            expect = bytearray(REGION)
            for kind, off, n, _ in done:
                expect[off - start:off - start + n] = pattern(off, n) if kind == "write" else bytes(n)
            assert data == bytes(expect), f"region {region}: flushed data lost"


@pytest.mark.parametrize("seed,flushes", [(1, 3), (2, 12), (3, 30)])
def test_kill_during_writes_leaks_at_worst(tmp_path, seed, flushes):
    path = tmp_path / "crash.qcow2"
    create_image(path, "qcow2", SIZE, cluster_size=4096)
    last = _run_and_kill(path, seed, flushes)
    assert last >= 0
    r = check_qcow2(path)
    assert r.corruptions == 0 and r.check_errors == 0, r.messages[:5]
    if HAVE_QEMU:
        report = qemu_check(path)
        assert report.get("corruptions", 0) == 0 and report["check-errors"] == 0
    _verify(path, seed, last)
    with open_image(path) as img:          # the dirty image opens and takes more writes
        img.write(0, b"after the crash")
    assert check_qcow2(path).corruptions == 0
    with open_image(path, readonly=True) as img:
        assert img.read(0, 15) == b"after the crash"
