#!/usr/bin/python3
"""A client that writes numbered 4 KiB blocks with FUA through libnbd and keeps a ledger.

write: writes numbered blocks 0, 1, 2, ... until STOP-FILE exists, each with FUA, block N to slot
N mod --slots, and appends one JSON line per event to LEDGER: {"ack": N, "t": wall-clock seconds}
for every acknowledged block, and
{"connect": t, "mac": MAC} for every connection (the MAC that the client's ARP table holds for the
host then, which tells which node served it). A write unanswered within --write-timeout, or a
failed one, drops the connection; a new one is tried every 50 ms.

verify: reads back every slot that holds an acknowledged block and prints {"checked": N, "lost":
[...]}: a slot must hold its last acknowledged block, or the one block written after the last
acknowledgement (it may have landed unacknowledged).

Its I/O is libnbd's; only the ledger is ours. Needs python3-libnbd (Debian).
"""
import argparse
import json
import os
import sys
import time

try:
    import nbd
except ImportError:
    sys.exit("python3-libnbd is missing (Debian package python3-libnbd; scripts/test installs it)")

BLOCK = 4096


def content(block):
    line = ("block %010d " % block).encode()
    return (line * (BLOCK // len(line) + 1))[:BLOCK]


def mac_of(host):
    """The MAC the client's ARP table (this network namespace's) holds for host."""
    try:
        with open("/proc/net/arp") as table:
            for line in table.read().splitlines()[1:]:
                fields = line.split()
                if fields and fields[0] == host:
                    return fields[3]
    except OSError:
        pass
    return None


def wait_for(handle, done, seconds):
    deadline = time.monotonic() + seconds
    while not done():
        if handle.aio_is_dead() or handle.aio_is_closed():
            raise nbd.Error("connection died")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        handle.poll(max(1, int(min(left, 0.05) * 1000)))


def connect(args):
    handle = nbd.NBD()
    handle.set_export_name(args.export)
    handle.aio_connect_tcp(args.host, str(args.port))
    wait_for(handle, handle.aio_is_ready, args.connect_timeout)
    return handle


def write(args):
    block = 0
    with open(args.ledger, "a", buffering=1) as ledger:
        while not os.path.exists(args.stop_file):
            try:
                handle = connect(args)
                if handle.is_read_only():
                    raise nbd.Error("read-only")
            except (nbd.Error, TimeoutError):
                time.sleep(0.05)
                continue
            ledger.write(json.dumps({"connect": time.time(), "mac": mac_of(args.host)}) + "\n")
            try:
                while not os.path.exists(args.stop_file):
                    offset = (block % args.slots) * BLOCK
                    cookie = handle.aio_pwrite(content(block), offset, flags=nbd.CMD_FLAG_FUA)
                    wait_for(handle, lambda: handle.aio_command_completed(cookie), args.write_timeout)
                    ledger.write(json.dumps({"ack": block, "t": time.time()}) + "\n")
                    block += 1
            except (nbd.Error, TimeoutError):
                pass
            # Dropping the handle closes its socket (libnbd 1.14 has no close()).
            del handle


def verify(args):
    last = {}
    newest = -1
    with open(args.ledger) as ledger:
        for line in ledger:
            entry = json.loads(line)
            if "ack" in entry:
                last[entry["ack"] % args.slots] = entry["ack"]
                newest = max(newest, entry["ack"])
    handle = None
    deadline = time.monotonic() + 30
    while handle is None:
        try:
            handle = connect(args)
        except (nbd.Error, TimeoutError):
            if time.monotonic() > deadline:
                print(json.dumps({"checked": 0, "lost": [-1], "error": "export not reachable within 30 s"}))
                return
            time.sleep(0.1)
    lost = []
    for slot, block in sorted(last.items()):
        found = handle.pread(BLOCK, slot * BLOCK)
        after = newest + 1
        if found != content(block) and not (after % args.slots == slot and found == content(after)):
            lost.append(block)
    print(json.dumps({"checked": len(last), "acknowledged": newest + 1, "lost": lost}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["write", "verify"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=10809)
    parser.add_argument("--export", default="vol0")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--stop-file", default="/nonexistent")
    parser.add_argument("--slots", type=int, default=16384, help="4 KiB slots of the export written in turn")
    parser.add_argument("--connect-timeout", type=float, default=0.3)
    parser.add_argument("--write-timeout", type=float, default=1.0)
    args = parser.parse_args()
    write(args) if args.mode == "write" else verify(args)


if __name__ == "__main__":
    main()
