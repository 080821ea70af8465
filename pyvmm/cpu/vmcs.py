"""VM-execution controls: which events exit, and the event-injection field.

The names follow the VMX controls of SDM Vol. 3C, chapter 25 (exception bitmap,
RDTSC exiting, interrupt-window exiting, the VMX-preemption timer). They are plain
data: the vCPU reads them at every exit, so a lab can change them between exits.

Fixed in pyvmm's model (not controls): CPUID always exits (as on VMX); HLT,
INVLPG, RDMSR/WRMSR and mov to CR0/CR3/CR4 always exit (they are intercepted at
the engine level to be emulated); every I/O port exits to the I/O bus.
"""

from dataclasses import dataclass
from typing import Optional


@dataclass
class VmcsControls:
    # Bit v set: a guest exception with vector v exits (reason 0) instead of being
    # delivered straight to the guest. Default: none, as KVM with EPT does for #PF.
    exception_bitmap: int = 0
    rdtsc_exiting: bool = False
    # Exit (reason 7) as soon as the guest can take an interrupt.
    interrupt_window_exiting: bool = False
    # Exit (reason 52) after this many ns of guest time; re-armed by whoever sets it.
    preemption_timer_ns: Optional[int] = None
    # VM-entry interruption-information: an event to inject at the next entry
    # (a pyvmm.cpu.events.Event), consumed when delivered.
    entry_event: object = None
    tsc_offset: int = 0
