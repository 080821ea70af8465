"""Image-level storage speed: pyvmm raw and qcow2 DiskImages, each next to the host
reading/writing the same file with os.pread/os.pwrite and next to ``qemu-img bench``
on the same qcow2 image, measured in the same run (extra_info).

    python3 -m pytest bench/test_storage.py --benchmark-only
"""
import pytest

from pyvmm.storage import bench as B
from pyvmm.storage import create_image

SIZE = 128 << 20
COUNT_4K = 10000


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("storage-bench")
    paths = {"raw": str(tmp / "d.raw"), "qcow2": str(tmp / "d.qcow2")}
    for fmt, path in paths.items():
        create_image(path, fmt, SIZE)
        B._prefill(path, fmt, SIZE)
    return paths


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("pattern", list(B.PATTERNS))
def test_storage(benchmark, images, fmt, pattern):
    request, write = B.PATTERNS[pattern]
    count = SIZE // request if request >= 1 << 20 else COUNT_4K
    offs = B.offsets(SIZE, request, count)
    benchmark.pedantic(B._time_image, args=(images[fmt], fmt, request, write, offs), rounds=5, iterations=1)
    mine = benchmark.stats.stats.min
    host = min(B._time_host(images["raw"], request, write, offs) for _ in range(5))
    mib = count * request / (1 << 20)
    info = {"mib_s": round(mib / mine, 1), "host_mib_s": round(mib / host, 1),
            "ratio_to_host": round(host / mine, 3)}
    if fmt == "qcow2":
        raw = min(B._time_image(images["raw"], "raw", request, write, offs) for _ in range(5))
        info["raw_mib_s"] = round(mib / raw, 1)
        info["ratio_to_raw"] = round(raw / mine, 3)
        qemu = B._time_qemu(images["qcow2"], "qcow2", request, write, count)
        if qemu is not None:
            info["qemu_img_bench_mib_s"] = round(mib / min(qemu, *(B._time_qemu(
                images["qcow2"], "qcow2", request, write, count) for _ in range(2))), 1)
    benchmark.extra_info.update(info)
    assert mine > 0 and host > 0
