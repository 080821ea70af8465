"""Random writes, discards and zero writes against a bytearray model, with reopen,
small caches (evictions) and backing files; qemu-img check and compare at the end."""
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pyvmm.storage import create_image, open_image
from pyvmm.storage.qcow2.check import check_qcow2
from pyvmm.storage.qcow2.image import Qcow2Image

from .conftest import HAVE_QEMU, pattern, qemu_check, qemu_img

SIZE = 256 << 10

op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.integers(1, 20000)),
    st.tuples(st.just("discard"), st.integers(0, SIZE - 1), st.integers(1, 40000)),
    st.tuples(st.just("zero"), st.integers(0, SIZE - 1), st.integers(1, 9000)),
    st.tuples(st.just("flush"), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# A discard shorter than a cluster that crosses a cluster boundary: the second cluster's
# part was left unzeroed (found by this test).
@example(ops=[("write", 2048, 1), ("discard", 1, 2048)], layout=(2048, "1.1", 4), backing=False)
@given(ops=st.lists(op, max_size=25),
       layout=st.sampled_from([(512, "1.1", 16), (1024, "0.10", 16), (4096, "1.1", 1),
                               (65536, "1.1", 64), (2048, "1.1", 4)]),
       backing=st.booleans())
def test_random_operations_match_a_model(tmp_path_factory, ops, layout, backing):
    tmp = tmp_path_factory.mktemp("fmt")
    cs, compat, bits = layout
    model = bytearray(SIZE)
    opts = dict(cluster_size=cs, compat=compat, refcount_bits=bits)
    if backing:
        model[:] = pattern(0, SIZE, seed=9)
        (tmp / "base.raw").write_bytes(model)
        opts.update(backing_file="base.raw", backing_fmt="raw")
    path = tmp / "t.qcow2"
    create_image(path, "qcow2", SIZE, **opts)
    img = Qcow2Image(path, cache_bytes=2 * cs)      # two tables per cache: constant evictions
    try:
        for kind, off, n in ops:
            n = min(n, SIZE - off)
            if kind == "write":
                data = pattern(off, n, seed=n)
                img.write(off, data)
                model[off:off + n] = data
            elif kind in ("discard", "zero"):
                if kind == "zero":
                    img.write(off, bytes(n))
                else:
                    img.discard(off, n)
                model[off:off + n] = bytes(n)
            elif kind == "flush":
                img.flush()
            else:
                img.close()
                img = Qcow2Image(path, cache_bytes=2 * cs)
            probe_at = (off * 31) % SIZE
            assert img.read(probe_at, min(5000, SIZE - probe_at)) == bytes(model[probe_at:probe_at + 5000])
        assert img.read(0, SIZE) == bytes(model)
    finally:
        img.close()
    r = check_qcow2(path)
    assert (r.corruptions, r.leaks, r.check_errors) == (0, 0, 0), r.messages[:5]
    if HAVE_QEMU:
        (tmp / "model.raw").write_bytes(model)
        report = qemu_check(path)
        assert "corruptions" not in report and "leaks" not in report and report["check-errors"] == 0
        assert qemu_img("compare", "-F", "raw", path, tmp / "model.raw", check=False).returncode == 0


def test_dirty_bit_is_set_while_writing_and_cleared_on_close(tmp_path):
    path = tmp_path / "d.qcow2"
    create_image(path, "qcow2", 1 << 20)
    img = open_image(path)
    assert not img.info()["dirty-flag"]
    img.write(0, b"x")
    with open_image(path, readonly=True) as other:
        assert other.info()["dirty-flag"]
    img.close()
    with open_image(path, readonly=True) as other:
        assert not other.info()["dirty-flag"]


def test_discarded_clusters_are_reused(tmp_path):
    path = tmp_path / "r.qcow2"
    create_image(path, "qcow2", 4 << 20, cluster_size=4096)
    with open_image(path) as img:
        img.write(0, b"\x01" * (1 << 20))
        img.flush()
        end = path.stat().st_size
        img.discard(0, 1 << 20)
        img.flush()
        img.write(2 << 20, b"\x02" * (1 << 20))
        assert img.read(0, 1 << 20) == bytes(1 << 20)
    assert path.stat().st_size <= end + 4096 * 4
    r = check_qcow2(path)
    assert (r.corruptions, r.leaks) == (0, 0)


def test_compressed_writes_pack_several_clusters_per_host_cluster(tmp_path):
    path = tmp_path / "c.qcow2"
    create_image(path, "qcow2", 1 << 20, cluster_size=4096)
    with open_image(path) as img:
        for i in range(16):
            img.write_compressed(i * 4096, bytes([i]) * 4096)
        assert all(img.read(i * 4096, 4096) == bytes([i]) * 4096 for i in range(16))
    r = check_qcow2(path)
    assert (r.corruptions, r.leaks, r.compressed_clusters) == (0, 0, 16)
    assert r.image_end_offset <= 8 * 4096     # header, tables and one shared data cluster
