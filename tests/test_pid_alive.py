"""Whether a PID's process still runs (what decides if a killed export's temporaries are
removed): on Windows ``os.kill(pid, 0)`` sends Ctrl-C (``CTRL_C_EVENT`` is 0) instead of
probing, so the process is opened and its exit code read there (tested with a stand-in
kernel32: this machine is no Windows). Fails against the code before the change."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from rave_core import folder_lock
from rave_deploy import io as rio

STILL_ACTIVE, ACCESS_DENIED, INVALID_PARAMETER = 259, 5, 87


def pid_alive(pid: int) -> bool:
    return folder_lock.pid_alive(pid)  # (looked up when called: the code before had none)


class Kernel32:
    """kernel32's OpenProcess, GetExitCodeProcess and CloseHandle, for ``processes``:
    ``{pid: exit code}`` (259: running); ``denied``: the PIDs OpenProcess refuses."""

    class Function:
        def __init__(self, fn):
            self.fn, self.restype, self.argtypes = fn, None, None

        def __call__(self, *args):
            return self.fn(*args)

    def __init__(self, processes, denied=()):
        self.processes, self.denied = processes, set(denied)
        self.calls, self.last_error, self.open = [], 0, set()
        self.OpenProcess = self.Function(self._open)
        self.GetExitCodeProcess = self.Function(self._exit_code)
        self.CloseHandle = self.Function(self._close)

    def _open(self, access, inherit, pid):
        self.calls.append(("OpenProcess", access, inherit, pid))
        if pid in self.denied:
            self.last_error = ACCESS_DENIED
            return None
        if pid not in self.processes:
            self.last_error = INVALID_PARAMETER
            return None
        self.open.add(1000 + pid)
        return 1000 + pid

    def _exit_code(self, handle, code):
        self.calls.append(("GetExitCodeProcess", handle))
        code._obj.value = self.processes[handle - 1000]
        return 1

    def _close(self, handle):
        self.calls.append(("CloseHandle", handle))
        self.open.remove(handle)
        return 1


@pytest.fixture()
def windows(monkeypatch):
    """This process as on Windows, with a stand-in kernel32; os.kill refuses signal 0."""
    kernel32 = Kernel32({10: STILL_ACTIVE, 11: 0, 12: 1}, denied={4})
    kills = []

    def kill(pid, sig):
        kills.append((pid, sig))
        raise AssertionError(f"os.kill({pid}, {sig}) on Windows")

    def windll(name, use_last_error=False):
        assert name == "kernel32" and use_last_error
        return kernel32

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(ctypes, "WinDLL", windll, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: kernel32.last_error, raising=False)
    yield kernel32
    assert kills == []


def test_windows_reads_the_exit_code_of_the_process(windows):
    """fix: os.kill(pid, 0) sent Ctrl-C to the process (group) it meant to probe."""
    assert pid_alive(10)                # running: STILL_ACTIVE
    assert not pid_alive(11)            # exited (code 0), its handle still held somewhere
    assert not pid_alive(12)
    assert not pid_alive(99)            # no such process: ERROR_INVALID_PARAMETER
    assert pid_alive(4)                 # someone else's (a service): ERROR_ACCESS_DENIED
    limited = 0x1000                    # PROCESS_QUERY_LIMITED_INFORMATION
    assert windows.calls[:3] == [("OpenProcess", limited, False, 10),
                                 ("GetExitCodeProcess", 1010), ("CloseHandle", 1010)]
    assert [c for c in windows.calls if c[0] == "OpenProcess"] == [
        ("OpenProcess", limited, False, pid) for pid in (10, 11, 12, 99, 4)]
    assert windows.open == set()        # every handle opened is closed
    assert windows.OpenProcess.restype is ctypes.c_void_p  # a 64-bit HANDLE, not an int


def test_windows_leftovers_of_a_gone_process_are_removed_and_a_live_ones_kept(windows,
                                                                            tmp_path):
    """The export's clean-up asks the same probe (never os.kill(pid, 0) on Windows)."""
    gone, running = tmp_path / ".m.h5.99.abcdefgh.partial", tmp_path / ".m.h5.10.abcdefgh.partial"
    gone.write_text("")
    running.write_text("")
    assert rio.remove_unfinished(tmp_path) == [gone]
    assert running.exists()


def test_posix_probes_with_signal_0():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    assert not pid_alive(child.pid)
    assert pid_alive(1)                 # init: someone else's (or ours, in a container)
