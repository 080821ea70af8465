"""Block I/O through the whole guest path (blkfront guest, ring, grants, blkback, image)
on raw and qcow2, each phase next to the host's direct pread/pwrite of the same bytes at
the same offsets and to qemu-io on the same image, measured in the same run (extra_info).

    python3 -m pytest bench/test_blk.py --benchmark-only
"""
import pytest

from pyvmm.devices.block import bench as B

MIB, OPS = 16, 512


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """One bench_blk run: the guest's own phase times and both baselines."""
    return B.bench_blk(mib=MIB, ops=OPS, repeats=1, workdir=tmp_path_factory.mktemp("blk-bench"))


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("phase", B.PHASES)
def test_blk(benchmark, measured, tmp_path, fmt, phase):
    from pyvmm.storage import create_image
    path = tmp_path / f"disk.{fmt}"
    create_image(path, fmt, (MIB + 1) << 20)
    # The timed body: a whole guest boot doing every phase; the phase's own time is the
    # guest's measurement (vcpu_time_info), reported next to the baselines below.
    results = benchmark.pedantic(B.run_guest, args=(str(path), fmt, MIB, OPS), rounds=1, iterations=1)
    ops, nbytes, ns = results[phase]
    row = measured["formats"][fmt][phase]
    benchmark.extra_info.update({
        "guest_mib_s": round(nbytes / (1 << 20) / (ns / 1e9), 1),
        "host_direct_mib_s": row["host_mib_s"], "qemu_io_mib_s": row["qemu_io_mib_s"],
        "guest_vs_host": round(row["host_ns"] / ns, 3),
        "qcow2_vs_raw_in_baseline_run": measured["qcow2_vs_raw"][phase]})
    assert nbytes == row["bytes"] and ns > 0
