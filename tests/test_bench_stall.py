"""The storage bench's stall sampler names the kernel wait a slow tap is in."""

from __future__ import annotations

import os
import threading

import pytest

from bench.stall import StallSampler, _signature


def test_signature_drops_the_scheduler_frames_and_offsets() -> None:
    stack = ("[<0>] __schedule+0x2f1/0x8a0\n[<0>] schedule+0x27/0x80\n"
             "[<0>] jbd2_log_wait_commit+0xb1/0x120\n[<0>] ext4_sync_file+0x1a2/0x3b0\n"
             "[<0>] __x64_sys_fdatasync+0x13/0x20\n[<0>] do_syscall_64+0x71/0x280\n")
    assert _signature(stack, 2) == "jbd2_log_wait_commit<ext4_sync_file"
    assert _signature("", 6) == ""


def test_a_tap_blocked_in_a_read_is_seen_in_the_read() -> None:
    sampler = StallSampler(threading.get_native_id(), after_ms=10, every_s=0.002)
    if not sampler.available:
        pytest.skip("the kernel stacks of /proc/self/task/*/stack need root")
    r, w = os.pipe()
    try:
        sampler.begin()
        threading.Timer(0.15, os.write, (w, b"x")).start()  # the tap's "I/O" ends then
        assert os.read(r, 1) == b"x"
        seen = sampler.end()
        sampler.begin()                                       # a fast tap: nothing
        quick = sampler.end()
    finally:
        sampler.close()
        os.close(r)
        os.close(w)
    reads = sum(n for sig, n in seen.items() if "sys_read" in sig)
    assert reads >= 10, seen            # ~140 ms past 10 ms, sampled every 2 ms
    assert quick == {}
