"""An 8250/16550A UART, enough for Linux's 8250 driver and its console.

Output goes to a callback (the console backend), input is queued by
``receive()`` from the host side.  The interrupt line is level-triggered
through the in-kernel irqchip (IRQ 4 for COM1).
"""

from __future__ import annotations

import collections
import threading
from typing import Callable

# register offsets
RBR_THR_DLL = 0
IER_DLM = 1
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 1, 2, 4, 8
IIR_NO_INT, IIR_THRI, IIR_RDI = 0x01, 0x02, 0x04
IIR_FIFO_ENABLED = 0xC0
LCR_DLAB = 0x80
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 1, 2, 4, 8, 0x10
LSR_DR, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
FCR_FIFO_ENABLE, FCR_CLEAR_RCVR, FCR_CLEAR_XMIT = 1, 2, 4
RX_FIFO_MAX = 4096

COM1_PORT, COM1_IRQ = 0x3F8, 4


class Serial8250:
    def __init__(self, irq_line, output: Callable[[bytes], None],
                 on_polled_tx: Callable[[bool], None] | None = None) -> None:
        self.irq = irq_line
        self.output = output
        # Told whether the transmit register is polled (THR-empty interrupt
        # off): then its writes may be coalesced by the VMM without an exit.
        self.on_polled_tx = on_polled_tx
        self.lock = threading.Lock()
        self.rx: collections.deque[int] = collections.deque()
        self.ier = 0
        self.lcr = 0x03
        self.mcr = MCR_OUT2
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_DSR | MSR_CTS | MSR_DCD
        self.scr = 0
        self.dll, self.dlm = 0x0C, 0
        self.fcr = 0
        self.thri_pending = False
        self._tx = bytearray()

    # --- guest side ------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self.lock:
            v = self._read(offset)
            self._update_irq()
            return v

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            was_polled = not self.ier & IER_THRI
            self._write(offset, value & 0xFF)
            self._update_irq()
            polled = not self.ier & IER_THRI
        self._flush_tx()
        if polled != was_polled and self.on_polled_tx is not None:
            self.on_polled_tx(polled)

    def _read(self, off: int) -> int:
        dlab = self.lcr & LCR_DLAB
        if off == RBR_THR_DLL:
            if dlab:
                return self.dll
            if self.rx:
                v = self.rx.popleft()
                if not self.rx:
                    self.lsr &= ~LSR_DR
                return v
            return 0
        if off == IER_DLM:
            return self.dlm if dlab else self.ier
        if off == IIR_FCR:
            iir = self._iir()
            if iir == IIR_THRI:
                self.thri_pending = False  # reading IIR acknowledges THRE
            return iir | (IIR_FIFO_ENABLED if self.fcr & FCR_FIFO_ENABLE else 0)
        if off == LCR:
            return self.lcr
        if off == MCR:
            return self.mcr
        if off == LSR:
            v = self.lsr
            self.lsr &= ~LSR_OE
            return v
        if off == MSR:
            if self.mcr & MCR_LOOP:
                m = self.mcr
                return ((m & MCR_RTS) << 3) | ((m & MCR_DTR) << 5) | ((m & MCR_OUT1) << 4) | ((m & MCR_OUT2) << 4)
            return self.msr
        return self.scr

    def _write(self, off: int, v: int) -> None:
        dlab = self.lcr & LCR_DLAB
        if off == RBR_THR_DLL:
            if dlab:
                self.dll = v
            elif self.mcr & MCR_LOOP:
                self._push_rx(v)
            else:
                self._tx.append(v)
                self.thri_pending = True
        elif off == IER_DLM:
            if dlab:
                self.dlm = v
            else:
                was = self.ier
                self.ier = v & 0x0F
                if self.ier & IER_THRI and not was & IER_THRI:
                    self.thri_pending = True  # enabling THRI with an empty THR raises it at once
        elif off == IIR_FCR:
            self.fcr = v
            if v & FCR_CLEAR_RCVR:
                self.rx.clear()
                self.lsr &= ~LSR_DR
        elif off == LCR:
            self.lcr = v
        elif off == MCR:
            self.mcr = v & 0x1F
        elif off == SCR:
            self.scr = v

    def _iir(self) -> int:
        if self.ier & IER_RDI and self.lsr & LSR_DR:
            return IIR_RDI
        if self.ier & IER_THRI and self.thri_pending:
            return IIR_THRI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        self.irq.set_level(self._iir() != IIR_NO_INT)

    def _push_rx(self, v: int) -> None:
        if len(self.rx) >= RX_FIFO_MAX:
            self.lsr |= LSR_OE
            return
        self.rx.append(v)
        self.lsr |= LSR_DR

    def _flush_tx(self) -> None:
        if self._tx:
            data, self._tx = bytes(self._tx), bytearray()
            self.output(data)

    # --- host side -------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Queue host input for the guest (from the console thread)."""
        with self.lock:
            for b in data:
                self._push_rx(b)
            self._update_irq()

    def save_state(self) -> dict:
        with self.lock:
            return {"ier": self.ier, "lcr": self.lcr, "mcr": self.mcr, "lsr": self.lsr,
                    "msr": self.msr, "scr": self.scr, "dll": self.dll, "dlm": self.dlm,
                    "fcr": self.fcr, "thri_pending": self.thri_pending, "rx": bytes(self.rx)}

    def load_state(self, state: dict) -> None:
        with self.lock:
            for k in ("ier", "lcr", "mcr", "lsr", "msr", "scr", "dll", "dlm", "fcr", "thri_pending"):
                setattr(self, k, state[k])
            self.rx = collections.deque(state["rx"])
            self._update_irq()
