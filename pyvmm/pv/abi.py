"""The Xen public ABI pyvmm speaks: struct layouts and constants, each citing its header.

Responsibility: describe, once, every Xen structure and constant the paravirtual side
needs (hypercall argument structs, grant entries, shared_info, start_info, errno
values) as ``cstruct`` layouts and plain integers, and keep a registry of them so that
``python3 -m pyvmm.pv.abi`` prints one ``sizeof(...)``/``offsetof(...)`` line per struct
member and one ``NAME = value`` line per constant. tests/pv/test_abi_headers.py prints
the same lines from the real headers with gcc and diffs the two.

Source: Xen's public headers as Debian's libxen-dev ships them under /usr/include/xen
(xen.h, arch-x86/xen.h, arch-x86/xen-x86_64.h, grant_table.h, event_channel.h, sched.h,
memory.h, errno.h), x86-64, interface version ``XEN_INTERFACE_VERSION`` (the layouts
below are those every interface version since 0x00040700 defines: ``vcpu_time_info``
has ``flags``, ``frame_list`` handles are ``xen_pfn_t``).

Invariants: layouts are immutable and registered once under their C typedef name;
``unsigned long``, ``xen_ulong_t`` and ``xen_pfn_t`` are 64-bit; a
``XEN_GUEST_HANDLE(T)`` is ``struct { T *p; }``, i.e. 8 bytes aligned to 8. Other
modules (devices/blkif.py, devices/netif.py, pv/xs_wire.py) keep a ``LAYOUTS`` list
that ``all_lines()`` imports and registers (see ``LAYOUT_MODULES``), or call
``register_layout``/``register_constants`` themselves.
"""

import importlib
from typing import NamedTuple

from pyvmm.pv.cstruct import Array, Struct, Union, layout_lines, i8, i16, u8, u16, u32, u64

XEN_INTERFACE_VERSION = 0x00040A00
"""The ``__XEN_INTERFACE_VERSION__`` these layouts are checked against (Xen 4.10)."""

PAGE_SIZE = 4096
PAGE_SHIFT = 12


# --- the registry -----------------------------------------------------------------

class Layout(NamedTuple):
    typedef: str      # the name C code uses: "grant_entry_v1_t"
    aggregate: object  # a cstruct Struct or Union
    header: str       # include path: "xen/grant_table.h"


class Constant(NamedTuple):
    name: str         # the name pyvmm uses
    value: int
    header: str
    cexpr: str        # the C expression with the same value ("XEN_EPERM" for EPERM)


_LAYOUTS = {}
_CONSTANTS = {}

# Modules of other parts of pyvmm whose ``LAYOUTS`` list of ``(typedef, aggregate)``
# pairs comes from the given header (a module may also call ``register_layout``
# itself). A module not written yet is skipped; an error inside one is not.
LAYOUT_MODULES = {
    "pyvmm.devices.blkif": "xen/io/blkif.h",
    "pyvmm.devices.netif": "xen/io/netif.h",
    "pyvmm.pv.xs_wire": "xen/io/xs_wire.h",
    "pyvmm.pv.console": "xen/io/console.h",
}


def register_layout(typedef, aggregate, header):
    """Add ``aggregate`` under its C name ``typedef`` from ``header``; returns ``aggregate``."""
    known = _LAYOUTS.get(typedef)
    if known is not None and known.aggregate is not aggregate:
        raise ValueError(f"layout {typedef!r} is already registered from {known.header}")
    _LAYOUTS[typedef] = Layout(typedef, aggregate, header)
    return aggregate


def register_constants(header, values, cprefix=""):
    """Add ``{name: value}`` constants from ``header``; C spells them ``cprefix + name``."""
    for name, value in values.items():
        known = _CONSTANTS.get(name)
        if known is not None and known.value != value:
            raise ValueError(f"constant {name} = {value} clashes with {known.value} from {known.header}")
        _CONSTANTS[name] = Constant(name, int(value), header, cprefix + name)


def _register_globals(header, names, cprefix=""):
    scope = globals()
    register_constants(header, {name: scope[name] for name in names.split()}, cprefix)


def _load_layout_modules():
    for name, header in LAYOUT_MODULES.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not name.startswith(exc.name):
                raise
            continue
        for typedef, aggregate in getattr(module, "LAYOUTS", ()):
            register_layout(typedef, aggregate, header)


def layouts():
    """Every registered layout, sorted by typedef name (after importing LAYOUT_MODULES)."""
    _load_layout_modules()
    return [_LAYOUTS[k] for k in sorted(_LAYOUTS)]


def constants():
    """Every registered constant, sorted by name (after importing LAYOUT_MODULES)."""
    _load_layout_modules()
    return [_CONSTANTS[k] for k in sorted(_CONSTANTS)]


def all_lines():
    """The lines ``python3 -m pyvmm.pv.abi`` prints: layouts first, then constants."""
    lines = []
    for layout in layouts():
        lines.extend(layout_lines(layout.aggregate, layout.typedef))
    for const in constants():
        lines.append(f"{const.cexpr} = {const.value}")
    return lines


def headers():
    """The include paths every registered layout and constant comes from."""
    return sorted({x.header for x in layouts()} | {c.header for c in constants()})


# --- scalar typedefs (arch-x86/xen.h, xen.h) ----------------------------------------

ulong = u64          # unsigned long on x86-64
xen_pfn_t = u64      # arch-x86/xen.h: typedef unsigned long xen_pfn_t
xen_ulong_t = u64    # arch-x86/xen.h: typedef unsigned long xen_ulong_t
domid_t = u16        # xen.h
grant_ref_t = u32    # grant_table.h
grant_handle_t = u32  # grant_table.h
evtchn_port_t = u32  # event_channel.h
uint = u32           # unsigned int
guest_handle = u64   # arch-x86/xen.h: XEN_GUEST_HANDLE(T) is struct { T *p; }


def _struct(typedef, header, members, cname=None):
    name = cname or (typedef[:-2] if typedef.endswith("_t") else typedef)
    return register_layout(typedef, Struct(name, members), header)


# --- errno.h ------------------------------------------------------------------------
# xen/include/public/errno.h: the values hypercalls return negated.
EPERM, ENOENT, ESRCH, EIO, ENXIO, E2BIG = 1, 2, 3, 5, 6, 7
EBADF, EAGAIN, ENOMEM, EACCES, EFAULT, EBUSY, EEXIST = 9, 11, 12, 13, 14, 16, 17
ENODEV, EINVAL, ENOSPC, ERANGE, ENOSYS, EOVERFLOW = 19, 22, 28, 34, 38, 75
_register_globals("xen/errno.h", "EPERM ENOENT ESRCH EIO ENXIO E2BIG EBADF EAGAIN ENOMEM "
                  "EACCES EFAULT EBUSY EEXIST ENODEV EINVAL ENOSPC ERANGE ENOSYS EOVERFLOW",
                  cprefix="XEN_")


# --- xen.h --------------------------------------------------------------------------
_XEN_H = "xen/xen.h"

__HYPERVISOR_mmu_update = 1
__HYPERVISOR_memory_op = 12
__HYPERVISOR_multicall = 13
__HYPERVISOR_set_timer_op = 15
__HYPERVISOR_xen_version = 17
__HYPERVISOR_console_io = 18
__HYPERVISOR_grant_table_op = 20
__HYPERVISOR_vcpu_op = 24
__HYPERVISOR_mmuext_op = 26
__HYPERVISOR_sched_op = 29
__HYPERVISOR_event_channel_op = 32
__HYPERVISOR_hvm_op = 34
_register_globals(_XEN_H, "__HYPERVISOR_mmu_update __HYPERVISOR_memory_op __HYPERVISOR_multicall "
                  "__HYPERVISOR_set_timer_op __HYPERVISOR_xen_version __HYPERVISOR_console_io "
                  "__HYPERVISOR_grant_table_op __HYPERVISOR_vcpu_op __HYPERVISOR_mmuext_op "
                  "__HYPERVISOR_sched_op __HYPERVISOR_event_channel_op __HYPERVISOR_hvm_op")

DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2
DOMID_COW = 0x7FF3
DOMID_INVALID = 0x7FF4
DOMID_IDLE = 0x7FFF
DOMID_MASK = 0x7FFF
_register_globals(_XEN_H, "DOMID_FIRST_RESERVED DOMID_SELF DOMID_IO DOMID_XEN DOMID_COW "
                  "DOMID_INVALID DOMID_IDLE DOMID_MASK")

VIRQ_TIMER, VIRQ_DEBUG, VIRQ_CONSOLE, VIRQ_DOM_EXC = 0, 1, 2, 3
NR_VIRQS = 24
_register_globals(_XEN_H, "VIRQ_TIMER VIRQ_DEBUG VIRQ_CONSOLE VIRQ_DOM_EXC NR_VIRQS")

MMU_NORMAL_PT_UPDATE, MMU_MACHPHYS_UPDATE = 0, 1
MMUEXT_PIN_L4_TABLE, MMUEXT_UNPIN_TABLE, MMUEXT_NEW_BASEPTR = 3, 4, 5
MMUEXT_TLB_FLUSH_LOCAL, MMUEXT_INVLPG_LOCAL = 6, 7
_register_globals(_XEN_H, "MMU_NORMAL_PT_UPDATE MMU_MACHPHYS_UPDATE MMUEXT_PIN_L4_TABLE "
                  "MMUEXT_UNPIN_TABLE MMUEXT_NEW_BASEPTR MMUEXT_TLB_FLUSH_LOCAL MMUEXT_INVLPG_LOCAL")

SIF_PRIVILEGED, SIF_INITDOMAIN = 1 << 0, 1 << 1
MAX_GUEST_CMDLINE = 1024
_register_globals(_XEN_H, "SIF_PRIVILEGED SIF_INITDOMAIN MAX_GUEST_CMDLINE")

XEN_LEGACY_MAX_VCPUS = 32   # arch-x86/xen.h
_register_globals("xen/arch-x86/xen.h", "XEN_LEGACY_MAX_VCPUS")

mmu_update = _struct("mmu_update_t", _XEN_H, [("ptr", u64), ("val", u64)])

mmuext_op = _struct("mmuext_op_t", _XEN_H, [
    ("cmd", uint),
    ("arg1", Union("mmuext_op_arg1", [("mfn", xen_pfn_t), ("linear_addr", ulong)])),
    ("arg2", Union("mmuext_op_arg2", [("nr_ents", uint), ("vcpumask", guest_handle),
                                      ("src_mfn", xen_pfn_t)])),
])

multicall_entry = _struct("multicall_entry_t", _XEN_H, [
    ("op", xen_ulong_t), ("result", xen_ulong_t), ("args", Array(xen_ulong_t, 6))])

vcpu_time_info = _struct("vcpu_time_info_t", _XEN_H, [
    ("version", u32), ("pad0", u32), ("tsc_timestamp", u64), ("system_time", u64),
    ("tsc_to_system_mul", u32), ("tsc_shift", i8), ("flags", u8), ("pad1", Array(u8, 2))])

# arch-x86/xen-x86_64.h
arch_vcpu_info = _struct("arch_vcpu_info_t", "xen/arch-x86/xen-x86_64.h",
                         [("cr2", ulong), ("pad", ulong)])

vcpu_info = _struct("vcpu_info_t", _XEN_H, [
    ("evtchn_upcall_pending", u8), ("evtchn_upcall_mask", u8),
    ("evtchn_pending_sel", xen_ulong_t), ("arch", arch_vcpu_info), ("time", vcpu_time_info)])

# arch-x86/xen.h
arch_shared_info = _struct("arch_shared_info_t", "xen/arch-x86/xen.h", [
    ("max_pfn", ulong), ("pfn_to_mfn_frame_list_list", xen_pfn_t), ("nmi_reason", ulong),
    ("p2m_cr3", ulong), ("p2m_vaddr", ulong), ("p2m_generation", ulong)])

EVTCHN_WORD_BITS = 64                         # bits in one xen_ulong_t
EVTCHN_2L_WORDS = 8 * xen_ulong_t.size        # shared_info.evtchn_pending[] length

shared_info = _struct("shared_info_t", _XEN_H, [
    ("vcpu_info", Array(vcpu_info, XEN_LEGACY_MAX_VCPUS)),
    ("evtchn_pending", Array(xen_ulong_t, EVTCHN_2L_WORDS)),
    ("evtchn_mask", Array(xen_ulong_t, EVTCHN_2L_WORDS)),
    ("wc_version", u32), ("wc_sec", u32), ("wc_nsec", u32), ("wc_sec_hi", u32),
    ("arch", arch_shared_info)])

start_info = _struct("start_info_t", _XEN_H, [
    ("magic", Array(u8, 32)), ("nr_pages", ulong), ("shared_info", ulong), ("flags", u32),
    ("store_mfn", xen_pfn_t), ("store_evtchn", u32),
    ("console", Union("start_info_console", [
        ("domU", Struct("start_info_domU", [("mfn", xen_pfn_t), ("evtchn", u32)])),
        ("dom0", Struct("start_info_dom0", [("info_off", u32), ("info_size", u32)]))])),
    ("pt_base", ulong), ("nr_pt_frames", ulong), ("mfn_list", ulong), ("mod_start", ulong),
    ("mod_len", ulong), ("cmd_line", Array(u8, MAX_GUEST_CMDLINE)),
    ("first_p2m_pfn", ulong), ("nr_p2m_frames", ulong)])


# --- hvm/hvm_op.h, hvm/params.h: the event-channel upcall vector ---------------------
_HVM_OP_H = "xen/hvm/hvm_op.h"
HVMOP_set_param, HVMOP_get_param = 0, 1
_register_globals(_HVM_OP_H, "HVMOP_set_param HVMOP_get_param")
xen_hvm_param = _struct("xen_hvm_param_t", _HVM_OP_H, [
    ("domid", domid_t), ("pad", u16), ("index", u32), ("value", u64)])

_HVM_PARAMS_H = "xen/hvm/params.h"
HVM_PARAM_CALLBACK_IRQ = 0
HVM_PARAM_CALLBACK_TYPE_GSI, HVM_PARAM_CALLBACK_TYPE_PCI_INTX, HVM_PARAM_CALLBACK_TYPE_VECTOR = 0, 1, 2
HVM_PARAM_CALLBACK_TYPE_SHIFT = 56      # params.h: "val[63:56]" is the delivery type
_register_globals(_HVM_PARAMS_H, "HVM_PARAM_CALLBACK_IRQ HVM_PARAM_CALLBACK_TYPE_GSI "
                  "HVM_PARAM_CALLBACK_TYPE_PCI_INTX HVM_PARAM_CALLBACK_TYPE_VECTOR")

# --- elfnote.h: the notes a PV kernel carries (name "Xen", one PT_NOTE) ---------------
_ELFNOTE_H = "xen/elfnote.h"
XEN_ELFNOTE_INFO, XEN_ELFNOTE_ENTRY, XEN_ELFNOTE_HYPERCALL_PAGE, XEN_ELFNOTE_VIRT_BASE = 0, 1, 2, 3
XEN_ELFNOTE_PADDR_OFFSET, XEN_ELFNOTE_XEN_VERSION, XEN_ELFNOTE_GUEST_OS = 4, 5, 6
XEN_ELFNOTE_GUEST_VERSION, XEN_ELFNOTE_LOADER, XEN_ELFNOTE_PAE_MODE = 7, 8, 9
XEN_ELFNOTE_FEATURES, XEN_ELFNOTE_BSD_SYMTAB, XEN_ELFNOTE_HV_START_LOW = 10, 11, 12
XEN_ELFNOTE_L1_MFN_VALID, XEN_ELFNOTE_SUSPEND_CANCEL, XEN_ELFNOTE_INIT_P2M = 13, 14, 15
XEN_ELFNOTE_MOD_START_PFN, XEN_ELFNOTE_SUPPORTED_FEATURES, XEN_ELFNOTE_PHYS32_ENTRY = 16, 17, 18
_register_globals(_ELFNOTE_H, "XEN_ELFNOTE_INFO XEN_ELFNOTE_ENTRY XEN_ELFNOTE_HYPERCALL_PAGE "
                  "XEN_ELFNOTE_VIRT_BASE XEN_ELFNOTE_PADDR_OFFSET XEN_ELFNOTE_XEN_VERSION "
                  "XEN_ELFNOTE_GUEST_OS XEN_ELFNOTE_GUEST_VERSION XEN_ELFNOTE_LOADER "
                  "XEN_ELFNOTE_PAE_MODE XEN_ELFNOTE_FEATURES XEN_ELFNOTE_BSD_SYMTAB "
                  "XEN_ELFNOTE_HV_START_LOW XEN_ELFNOTE_L1_MFN_VALID XEN_ELFNOTE_SUSPEND_CANCEL "
                  "XEN_ELFNOTE_INIT_P2M XEN_ELFNOTE_MOD_START_PFN XEN_ELFNOTE_SUPPORTED_FEATURES "
                  "XEN_ELFNOTE_PHYS32_ENTRY")


# --- grant_table.h ------------------------------------------------------------------
_GNT_H = "xen/grant_table.h"

GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
_register_globals(_GNT_H, "GNTTABOP_map_grant_ref GNTTABOP_unmap_grant_ref GNTTABOP_setup_table "
                  "GNTTABOP_dump_table GNTTABOP_transfer GNTTABOP_copy GNTTABOP_query_size "
                  "GNTTABOP_unmap_and_replace GNTTABOP_set_version GNTTABOP_get_status_frames "
                  "GNTTABOP_get_version")

GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1

GTF_invalid = 0
GTF_permit_access = 1
GTF_accept_transfer = 2
GTF_transitive = 3
GTF_type_mask = 3
GTF_readonly = 1 << 2
GTF_reading = 1 << 3
GTF_writing = 1 << 4
GTF_PWT = 1 << 5
GTF_PCD = 1 << 6
GTF_PAT = 1 << 7
GTF_sub_page = 1 << 8
GTF_transfer_committed = 1 << 2
GTF_transfer_completed = 1 << 3
_register_globals(_GNT_H, "GNTTAB_NR_RESERVED_ENTRIES GNTTAB_RESERVED_CONSOLE GNTTAB_RESERVED_XENSTORE "
                  "GTF_invalid GTF_permit_access GTF_accept_transfer GTF_transitive GTF_type_mask "
                  "GTF_readonly GTF_reading GTF_writing GTF_PWT GTF_PCD GTF_PAT GTF_sub_page "
                  "GTF_transfer_committed GTF_transfer_completed")

GNTMAP_device_map = 1 << 0
GNTMAP_host_map = 1 << 1
GNTMAP_readonly = 1 << 2
GNTMAP_application_map = 1 << 3
GNTMAP_contains_pte = 1 << 4
GNTCOPY_source_gref = 1 << 0
GNTCOPY_dest_gref = 1 << 1
_register_globals(_GNT_H, "GNTMAP_device_map GNTMAP_host_map GNTMAP_readonly GNTMAP_application_map "
                  "GNTMAP_contains_pte GNTCOPY_source_gref GNTCOPY_dest_gref")

GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10
GNTST_address_too_big = -11
GNTST_eagain = -12
GNTST_no_space = -13
_register_globals(_GNT_H, "GNTST_okay GNTST_general_error GNTST_bad_domain GNTST_bad_gntref "
                  "GNTST_bad_handle GNTST_bad_virt_addr GNTST_bad_dev_addr GNTST_no_device_space "
                  "GNTST_permission_denied GNTST_bad_page GNTST_bad_copy_arg GNTST_address_too_big "
                  "GNTST_eagain GNTST_no_space")

GNTST_MESSAGES = (  # grant_table.h GNTTABOP_error_msgs, indexed by -status
    "okay", "undefined error", "unrecognised domain id", "invalid grant reference",
    "invalid mapping handle", "invalid virtual address", "invalid device address",
    "no spare translation slot in the I/O MMU", "permission denied", "bad page",
    "copy arguments cross page boundary", "page address size too large",
    "operation not done; try again", "out of space")

grant_entry_v1 = _struct("grant_entry_v1_t", _GNT_H, [
    ("flags", u16), ("domid", domid_t), ("frame", u32)])
grant_entry_header = _struct("grant_entry_header_t", _GNT_H, [("flags", u16), ("domid", domid_t)])
grant_entry_v2 = register_layout("grant_entry_v2_t", Union("grant_entry_v2", [
    ("hdr", grant_entry_header),
    ("full_page", Struct("full_page", [("hdr", grant_entry_header), ("pad0", u32), ("frame", u64)])),
    ("sub_page", Struct("sub_page", [("hdr", grant_entry_header), ("page_off", u16),
                                     ("length", u16), ("frame", u64)])),
    ("transitive", Struct("transitive", [("hdr", grant_entry_header), ("trans_domid", domid_t),
                                         ("pad0", u16), ("gref", grant_ref_t)])),
    ("__spacer", Array(u32, 4))]), _GNT_H)

gnttab_map_grant_ref = _struct("gnttab_map_grant_ref_t", _GNT_H, [
    ("host_addr", u64), ("flags", u32), ("ref", grant_ref_t), ("dom", domid_t),
    ("status", i16), ("handle", grant_handle_t), ("dev_bus_addr", u64)])
gnttab_unmap_grant_ref = _struct("gnttab_unmap_grant_ref_t", _GNT_H, [
    ("host_addr", u64), ("dev_bus_addr", u64), ("handle", grant_handle_t), ("status", i16)])
gnttab_setup_table = _struct("gnttab_setup_table_t", _GNT_H, [
    ("dom", domid_t), ("nr_frames", u32), ("status", i16), ("frame_list", guest_handle)])
gnttab_dump_table = _struct("gnttab_dump_table_t", _GNT_H, [("dom", domid_t), ("status", i16)])
gnttab_transfer = _struct("gnttab_transfer_t", _GNT_H, [
    ("mfn", xen_pfn_t), ("domid", domid_t), ("ref", grant_ref_t), ("status", i16)])
_gnttab_copy_ptr = Struct("gnttab_copy_ptr", [
    ("u", Union("gnttab_copy_ptr_u", [("ref", grant_ref_t), ("gmfn", xen_pfn_t)])),
    ("domid", domid_t), ("offset", u16)])
gnttab_copy = _struct("gnttab_copy_t", _GNT_H, [
    ("source", _gnttab_copy_ptr), ("dest", _gnttab_copy_ptr), ("len", u16), ("flags", u16),
    ("status", i16)])
gnttab_query_size = _struct("gnttab_query_size_t", _GNT_H, [
    ("dom", domid_t), ("nr_frames", u32), ("max_nr_frames", u32), ("status", i16)])
gnttab_unmap_and_replace = _struct("gnttab_unmap_and_replace_t", _GNT_H, [
    ("host_addr", u64), ("new_addr", u64), ("handle", grant_handle_t), ("status", i16)])
gnttab_set_version = _struct("gnttab_set_version_t", _GNT_H, [("version", u32)])
gnttab_get_version = _struct("gnttab_get_version_t", _GNT_H, [
    ("dom", domid_t), ("pad", u16), ("version", u32)])


# --- event_channel.h ----------------------------------------------------------------
_EVT_H = "xen/event_channel.h"

EVTCHNOP_bind_interdomain = 0
EVTCHNOP_bind_virq = 1
EVTCHNOP_bind_pirq = 2
EVTCHNOP_close = 3
EVTCHNOP_send = 4
EVTCHNOP_status = 5
EVTCHNOP_alloc_unbound = 6
EVTCHNOP_bind_ipi = 7
EVTCHNOP_bind_vcpu = 8
EVTCHNOP_unmask = 9
EVTCHNOP_reset = 10
EVTCHNOP_init_control = 11
EVTCHNOP_expand_array = 12
EVTCHNOP_set_priority = 13
EVTCHNSTAT_closed = 0
EVTCHNSTAT_unbound = 1
EVTCHNSTAT_interdomain = 2
EVTCHNSTAT_pirq = 3
EVTCHNSTAT_virq = 4
EVTCHNSTAT_ipi = 5
EVTCHN_2L_NR_CHANNELS = xen_ulong_t.size * xen_ulong_t.size * 64
_register_globals(_EVT_H, "EVTCHNOP_bind_interdomain EVTCHNOP_bind_virq EVTCHNOP_bind_pirq "
                  "EVTCHNOP_close EVTCHNOP_send EVTCHNOP_status EVTCHNOP_alloc_unbound "
                  "EVTCHNOP_bind_ipi EVTCHNOP_bind_vcpu EVTCHNOP_unmask EVTCHNOP_reset "
                  "EVTCHNOP_init_control EVTCHNOP_expand_array EVTCHNOP_set_priority "
                  "EVTCHNSTAT_closed EVTCHNSTAT_unbound EVTCHNSTAT_interdomain EVTCHNSTAT_pirq "
                  "EVTCHNSTAT_virq EVTCHNSTAT_ipi EVTCHN_2L_NR_CHANNELS")

evtchn_alloc_unbound = _struct("evtchn_alloc_unbound_t", _EVT_H, [
    ("dom", domid_t), ("remote_dom", domid_t), ("port", evtchn_port_t)])
evtchn_bind_interdomain = _struct("evtchn_bind_interdomain_t", _EVT_H, [
    ("remote_dom", domid_t), ("remote_port", evtchn_port_t), ("local_port", evtchn_port_t)])
evtchn_bind_virq = _struct("evtchn_bind_virq_t", _EVT_H, [
    ("virq", u32), ("vcpu", u32), ("port", evtchn_port_t)])
evtchn_bind_pirq = _struct("evtchn_bind_pirq_t", _EVT_H, [
    ("pirq", u32), ("flags", u32), ("port", evtchn_port_t)])
evtchn_bind_ipi = _struct("evtchn_bind_ipi_t", _EVT_H, [("vcpu", u32), ("port", evtchn_port_t)])
evtchn_close = _struct("evtchn_close_t", _EVT_H, [("port", evtchn_port_t)])
evtchn_send = _struct("evtchn_send_t", _EVT_H, [("port", evtchn_port_t)])
evtchn_status = _struct("evtchn_status_t", _EVT_H, [
    ("dom", domid_t), ("port", evtchn_port_t), ("status", u32), ("vcpu", u32),
    ("u", Union("evtchn_status_u", [
        ("unbound", Struct("evtchn_status_unbound", [("dom", domid_t)])),
        ("interdomain", Struct("evtchn_status_interdomain", [("dom", domid_t),
                                                             ("port", evtchn_port_t)])),
        ("pirq", u32), ("virq", u32)]))])
evtchn_bind_vcpu = _struct("evtchn_bind_vcpu_t", _EVT_H, [("port", evtchn_port_t), ("vcpu", u32)])
evtchn_unmask = _struct("evtchn_unmask_t", _EVT_H, [("port", evtchn_port_t)])
evtchn_reset = _struct("evtchn_reset_t", _EVT_H, [("dom", domid_t)])
evtchn_init_control = _struct("evtchn_init_control_t", _EVT_H, [
    ("control_gfn", u64), ("offset", u32), ("vcpu", u32), ("link_bits", u8),
    ("_pad", Array(u8, 7))])
evtchn_expand_array = _struct("evtchn_expand_array_t", _EVT_H, [("array_gfn", u64)])
evtchn_set_priority = _struct("evtchn_set_priority_t", _EVT_H, [
    ("port", evtchn_port_t), ("priority", u32)])
evtchn_op = _struct("evtchn_op_t", _EVT_H, [
    ("cmd", u32),
    ("u", Union("evtchn_op_u", [
        ("alloc_unbound", evtchn_alloc_unbound), ("bind_interdomain", evtchn_bind_interdomain),
        ("bind_virq", evtchn_bind_virq), ("bind_pirq", evtchn_bind_pirq),
        ("bind_ipi", evtchn_bind_ipi), ("close", evtchn_close), ("send", evtchn_send),
        ("status", evtchn_status), ("bind_vcpu", evtchn_bind_vcpu), ("unmask", evtchn_unmask)]))])


# --- sched.h ------------------------------------------------------------------------
_SCHED_H = "xen/sched.h"

SCHEDOP_yield = 0
SCHEDOP_block = 1
SCHEDOP_shutdown = 2
SCHEDOP_poll = 3
SCHEDOP_remote_shutdown = 4
SCHEDOP_shutdown_code = 5
SCHEDOP_watchdog = 6
SHUTDOWN_poweroff = 0
SHUTDOWN_reboot = 1
SHUTDOWN_suspend = 2
SHUTDOWN_crash = 3
SHUTDOWN_watchdog = 4
SHUTDOWN_soft_reset = 5
SHUTDOWN_MAX = 5
_register_globals(_SCHED_H, "SCHEDOP_yield SCHEDOP_block SCHEDOP_shutdown SCHEDOP_poll "
                  "SCHEDOP_remote_shutdown SCHEDOP_shutdown_code SCHEDOP_watchdog "
                  "SHUTDOWN_poweroff SHUTDOWN_reboot SHUTDOWN_suspend SHUTDOWN_crash "
                  "SHUTDOWN_watchdog SHUTDOWN_soft_reset SHUTDOWN_MAX")

sched_shutdown = _struct("sched_shutdown_t", _SCHED_H, [("reason", uint)])
sched_poll = _struct("sched_poll_t", _SCHED_H, [
    ("ports", guest_handle), ("nr_ports", uint), ("timeout", u64)])
sched_remote_shutdown = _struct("sched_remote_shutdown_t", _SCHED_H, [
    ("domain_id", domid_t), ("reason", uint)])
sched_watchdog = _struct("sched_watchdog_t", _SCHED_H, [("id", u32), ("timeout", u32)])


# --- memory.h -----------------------------------------------------------------------
_MEM_H = "xen/memory.h"

XENMEM_increase_reservation = 0
XENMEM_decrease_reservation = 1
XENMEM_maximum_ram_page = 2
XENMEM_current_reservation = 3
XENMEM_maximum_reservation = 4
XENMEM_populate_physmap = 6
XENMEM_add_to_physmap = 7
XENMEM_memory_map = 9
XENMEM_exchange = 11
XENMEM_maximum_gpfn = 14
XENMEM_remove_from_physmap = 15
XENMAPSPACE_shared_info = 0
XENMAPSPACE_grant_table = 1
XENMAPSPACE_gmfn = 2
XENMAPIDX_grant_table_status = 0x80000000
_register_globals(_MEM_H, "XENMEM_increase_reservation XENMEM_decrease_reservation "
                  "XENMEM_maximum_ram_page XENMEM_current_reservation XENMEM_maximum_reservation "
                  "XENMEM_populate_physmap XENMEM_add_to_physmap XENMEM_memory_map XENMEM_exchange "
                  "XENMEM_maximum_gpfn XENMEM_remove_from_physmap XENMAPSPACE_shared_info "
                  "XENMAPSPACE_grant_table XENMAPSPACE_gmfn XENMAPIDX_grant_table_status")

xen_memory_reservation = _struct("xen_memory_reservation_t", _MEM_H, [
    ("extent_start", guest_handle), ("nr_extents", xen_ulong_t), ("extent_order", uint),
    ("mem_flags", uint), ("domid", domid_t)])
xen_memory_exchange = _struct("xen_memory_exchange_t", _MEM_H, [
    ("in", xen_memory_reservation), ("out", xen_memory_reservation),
    ("nr_exchanged", xen_ulong_t)])
xen_add_to_physmap = _struct("xen_add_to_physmap_t", _MEM_H, [
    ("domid", domid_t), ("size", u16), ("space", uint), ("idx", xen_ulong_t),
    ("gpfn", xen_pfn_t)])


# --- the hypercall table: xen.h, version.h, features.h -----------------------------------
# Numbers and layouts pyvmm.pv.hypercall, pv_mmu, memory_op and multicall use beyond the ones above.

__HYPERVISOR_update_va_mapping = 14
_register_globals(_XEN_H, "__HYPERVISOR_update_va_mapping")

MMU_PT_UPDATE_PRESERVE_AD, MMU_PT_UPDATE_NO_TRANSLATE = 2, 3
MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE, MMUEXT_PIN_L3_TABLE = 0, 1, 2
MMUEXT_TLB_FLUSH_MULTI, MMUEXT_INVLPG_MULTI, MMUEXT_TLB_FLUSH_ALL, MMUEXT_INVLPG_ALL = 8, 9, 10, 11
MMUEXT_FLUSH_CACHE, MMUEXT_SET_LDT, MMUEXT_NEW_USER_BASEPTR = 12, 13, 15
MMUEXT_CLEAR_PAGE, MMUEXT_COPY_PAGE, MMUEXT_FLUSH_CACHE_GLOBAL = 16, 17, 18
MMUEXT_MARK_SUPER, MMUEXT_UNMARK_SUPER = 19, 20
_register_globals(_XEN_H, "MMU_PT_UPDATE_PRESERVE_AD MMU_PT_UPDATE_NO_TRANSLATE MMUEXT_PIN_L1_TABLE "
                  "MMUEXT_PIN_L2_TABLE MMUEXT_PIN_L3_TABLE MMUEXT_TLB_FLUSH_MULTI MMUEXT_INVLPG_MULTI "
                  "MMUEXT_TLB_FLUSH_ALL MMUEXT_INVLPG_ALL MMUEXT_FLUSH_CACHE MMUEXT_SET_LDT "
                  "MMUEXT_NEW_USER_BASEPTR MMUEXT_CLEAR_PAGE MMUEXT_COPY_PAGE MMUEXT_FLUSH_CACHE_GLOBAL "
                  "MMUEXT_MARK_SUPER MMUEXT_UNMARK_SUPER")

UVMF_NONE, UVMF_TLB_FLUSH, UVMF_INVLPG, UVMF_FLUSHTYPE_MASK = 0, 1, 2, 3
UVMF_MULTI, UVMF_LOCAL, UVMF_ALL = 0, 0, 1 << 2
_register_globals(_XEN_H, "UVMF_NONE UVMF_TLB_FLUSH UVMF_INVLPG UVMF_FLUSHTYPE_MASK UVMF_MULTI "
                  "UVMF_LOCAL UVMF_ALL")

CONSOLEIO_write, CONSOLEIO_read = 0, 1
_register_globals(_XEN_H, "CONSOLEIO_write CONSOLEIO_read")

# arch-x86/xen-x86_64.h: where a 64-bit PV guest's hypervisor hole starts. Not registered:
# the gcc check prints constants as long long, and this one does not fit.
HYPERVISOR_VIRT_START = 0xFFFF_8000_0000_0000

_VERSION_H = "xen/version.h"
XENVER_version, XENVER_extraversion, XENVER_compile_info, XENVER_capabilities = 0, 1, 2, 3
XENVER_changeset, XENVER_platform_parameters, XENVER_get_features, XENVER_pagesize = 4, 5, 6, 7
XENVER_guest_handle, XENVER_commandline, XENVER_build_id = 8, 9, 10
XEN_EXTRAVERSION_LEN, XEN_CAPABILITIES_INFO_LEN, XEN_CHANGESET_INFO_LEN = 16, 1024, 64
XEN_COMMANDLINE_LEN = 1024          # sizeof(xen_commandline_t)
XEN_DOMAIN_HANDLE_LEN = 16          # sizeof(xen_domain_handle_t), xen.h
_register_globals(_VERSION_H, "XENVER_version XENVER_extraversion XENVER_compile_info "
                  "XENVER_capabilities XENVER_changeset XENVER_platform_parameters "
                  "XENVER_get_features XENVER_pagesize XENVER_guest_handle XENVER_commandline "
                  "XENVER_build_id XEN_EXTRAVERSION_LEN XEN_CAPABILITIES_INFO_LEN "
                  "XEN_CHANGESET_INFO_LEN")

xen_compile_info = _struct("xen_compile_info_t", _VERSION_H, [
    ("compiler", Array(u8, 64)), ("compile_by", Array(u8, 16)),
    ("compile_domain", Array(u8, 32)), ("compile_date", Array(u8, 32))])
xen_platform_parameters = _struct("xen_platform_parameters_t", _VERSION_H,
                                  [("virt_start", xen_ulong_t)])
xen_feature_info = _struct("xen_feature_info_t", _VERSION_H, [("submap_idx", uint), ("submap", u32)])

_FEATURES_H = "xen/features.h"
XENFEAT_writable_page_tables = 0
XENFEAT_writable_descriptor_tables = 1
XENFEAT_auto_translated_physmap = 2
XENFEAT_supervisor_mode_kernel = 3
XENFEAT_pae_pgdir_above_4gb = 4
XENFEAT_mmu_pt_update_preserve_ad = 5
XENFEAT_gnttab_map_avail_bits = 7
XENFEAT_NR_SUBMAPS = 1
_register_globals(_FEATURES_H, "XENFEAT_writable_page_tables XENFEAT_writable_descriptor_tables "
                  "XENFEAT_auto_translated_physmap XENFEAT_supervisor_mode_kernel "
                  "XENFEAT_pae_pgdir_above_4gb XENFEAT_mmu_pt_update_preserve_ad "
                  "XENFEAT_gnttab_map_avail_bits XENFEAT_NR_SUBMAPS")

# memory.h: XENMEM_* commands carry a continuation start in the bits above MEMOP_CMD_MASK
# (xen/include/xen/hypercall.h, not a public header, so not registered).
MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1


def main():
    # Run as ``-m`` this file is ``__main__``; the registry the other modules fill on
    # import is the one in ``pyvmm.pv.abi``, so print from that one.
    from pyvmm.pv import abi as registry
    for line in registry.all_lines():
        print(line)


if __name__ == "__main__":
    main()
