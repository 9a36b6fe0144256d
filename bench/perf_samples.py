"""`perf script` output sorted into what each sample's CPU time was spent on: kernel
time by the syscall it serves, user time by the code it runs."""

from __future__ import annotations

import collections
from pathlib import Path

KERNEL = "[kernel.kallsyms]"
_WRITE = "kernel: write to sockets (with loopback delivery to the reader)"
_READ = "kernel: read from sockets"
_POLL = "kernel: epoll"
_MEMORY = "kernel: memory (mmap, munmap, mremap, page faults)"
_SYSCALLS = {
    **dict.fromkeys(("writev", "write", "send", "sendto", "sendmsg"), _WRITE),
    **dict.fromkeys(("read", "readv", "recv", "recvfrom", "recvmsg"), _READ),
    **dict.fromkeys(("epoll_wait", "epoll_pwait", "epoll_ctl"), _POLL),
    **dict.fromkeys(("mmap", "munmap", "mremap", "brk", "madvise"), _MEMORY),
}
_OTHER_KERNEL = "kernel: other (timers, scheduling, interrupts, other syscalls)"
# User space, by the shared object the sample's innermost frame is in.
_PYTHON = "Python interpreter (the relay's Python code)"
_SCANNER = "SSE scanner (Cython)"
_PUMP = "body pump and native path (Cython)"
_LOOP = "event loop (uvloop, libuv)"
_NGINX = "nginx's own code"
_LIBC = "libc (copies, allocation)"
_OTHER_USER = "other user space"
ORDER = (
    _WRITE,
    _READ,
    _POLL,
    _MEMORY,
    _OTHER_KERNEL,
    _PYTHON,
    _SCANNER,
    _PUMP,
    _LOOP,
    _NGINX,
    _LIBC,
    _OTHER_USER,
)

Frame = tuple[str, str]  # (symbol, shared object), innermost first


def bucket(stack: list[Frame]) -> str:
    """What a sample's CPU time was spent on. Kernel time goes by the libc syscall
    wrapper that entered the kernel (kernel-side names vary with inlining)."""
    leaf_dso = stack[0][1]
    if leaf_dso == KERNEL:
        if any(symbol == "handle_mm_fault" for symbol, _ in stack):
            return _MEMORY
        caller = next((frame for frame in stack if frame[1] != KERNEL), None)
        if caller is None or not Path(caller[1]).name.startswith("libc.so"):
            return _OTHER_KERNEL
        name = caller[0].removeprefix("__GI_").lstrip("_").removeprefix("libc_")
        name = name.split(".")[0]  # sysmalloc_mmap.constprop.0 and the like
        return _SYSCALLS.get(name, _OTHER_KERNEL)
    name = Path(leaf_dso).name
    if name.startswith(("libpython", "python")):
        return _PYTHON
    if name.startswith("_fastsse"):
        return _SCANNER
    if name.startswith(("_bodypump", "_journal")):  # the arena is the native path's
        return _PUMP
    if "uvloop" in leaf_dso:
        return _LOOP
    if name == "nginx":
        return _NGINX
    if name.startswith("libc.so"):
        return _LIBC
    return _OTHER_USER


def parse_perf_script(text: str) -> collections.Counter[str]:
    """Samples per `bucket`, from `perf script -F ip,sym,dso` output (with call chains)."""
    counts: collections.Counter[str] = collections.Counter()
    for block in text.split("\n\n"):
        stack: list[Frame] = []
        for line in block.splitlines():
            parts = line.strip().split(" ", 1)
            if len(parts) == 2 and parts[1].endswith(")"):
                symbol, _, dso = parts[1].rpartition(" (")
                stack.append((symbol.split("+")[0], dso[:-1]))
        if stack:
            counts[bucket(stack)] += 1
    return counts
