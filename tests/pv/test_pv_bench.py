"""`pyvmm bench pv` (pyvmm/pv/bench.py): the VMM stamps the pvbench guest's phases."""

import pytest

from pyvmm.errors import PyvmmError
from pyvmm.pv import bench as B


def test_every_phase_is_measured_with_its_exits_and_the_guests_checks_pass():
    phases, grants = B.run_guest(n=64, grants=4, grant_rounds=2)
    assert set(phases) == set(B.PHASES)
    assert phases["null_hypercall"]["exits"] == {"VMCALL": 64}     # the markers are not counted
    assert phases["cpuid"]["exits"] == {"CPUID": 64} and phases["cpuid_python"]["exits"] == {"CPUID": 64}
    trapped = sum(phases["pt_trapped"]["exits"].values())
    assert trapped >= 2 * 64                                       # each store and each load exits
    assert phases["pt_mmu_update"]["exits"]["VMCALL"] == 1 and phases["pt_multicall"]["exits"]["VMCALL"] == 1
    assert sum(phases["pt_mmu_update"]["exits"].values()) < trapped
    assert (grants["pages"], grants["copies"]) == (8, 4) and grants["map_unmap_ns"] > 0


def test_under_ept_the_stores_do_not_exit_and_a_missing_guest_is_a_clear_error(tmp_path):
    phases, _ = B.run_guest(n=16, grants=1, grant_rounds=1, mmu="ept")
    assert phases["pt_trapped"]["exits"] == {}
    with pytest.raises(PyvmmError, match="pvbench guest is missing"):
        B.run_guest(kernel=str(tmp_path / "nope.elf"))


def test_the_report_names_each_comparison():
    result = B.bench_pv(n=32, grants=2, repeats=1)
    text = B.format_results(result)
    assert "null hypercall" in text and "page-table updates" in text and "grant map+unmap" in text
    assert result["pt_updates"]["mmu_update_exits"] < result["pt_updates"]["trapped_exits"]
