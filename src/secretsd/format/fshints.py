"""Filesystem hints that change where files land, never what they hold.

``mark_topdir`` sets ext2/3/4's "top of directory hierarchy" flag
(``chattr +T``) on the folder that holds every workspace's folder, so the
Orlov allocator puts each workspace's folder in a block group of its own
instead of packing them all into one.

Why it matters: every write creates a new generation (a folder, its files
and a symlink) and later removes an old one, so a busy host frees inodes at
the rate it writes. On ext4 without a journal, allocating an inode skips
every inode of its group freed in the last minute (five when its inode
table is not yet written back), checking them one by one; with every
workspace in one group, each write pays for all the others' churn (measured
under `perf`: about half of the control plane's CPU samples, right after an
earlier run had freed its files; docs/operations.md). With a group per
workspace a write pays for its own. Journaled ext4, xfs and btrfs do not
scan; there the flag only spreads folders, which costs nothing.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

_LONG = ctypes.sizeof(ctypes.c_long)
# _IOR('f', 1, long) and _IOW('f', 2, long); the kernel reads and writes an int.
FS_IOC_GETFLAGS = (2 << 30) | (_LONG << 16) | (ord("f") << 8) | 1
FS_IOC_SETFLAGS = (1 << 30) | (_LONG << 16) | (ord("f") << 8) | 2
FS_TOPDIR_FL = 0x00020000


def mark_topdir(path: str | os.PathLike[str]) -> bool:
    """Set FS_TOPDIR_FL on the folder ``path``; False where the filesystem has no such flag."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            flags = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("i", 0)))[0]
            if not flags & FS_TOPDIR_FL:
                fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL))
        except OSError:  # ENOTTY/EOPNOTSUPP (tmpfs, overlay, xfs...), EPERM: only a hint
            return False
        return True
    finally:
        os.close(fd)
