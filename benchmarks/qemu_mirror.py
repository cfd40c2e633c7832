#!/usr/bin/env python3
"""Drives a qemu-storage-daemon mirror job over its QMP socket, for benchmarks/replication.sh.

  qemu_mirror.py start SOCKET MODE   starts blockdev-mirror from node "src" to node "tgt" with
                                     copy-mode MODE (write-blocking or background) and returns once
                                     the job reports ready (source and target identical)
  qemu_mirror.py check SOCKET        waits (up to five minutes) until the job has copied everything
                                     it has been given, then exits 0 when it is still running and
                                     ready, else prints the job's state (or its absence) and exits 1

A job that fails on the way (BLOCK_JOB_COMPLETED with an error, BLOCK_JOB_ERROR) is reported with
qemu's message and the helper exits 1. The monitor allows one client at a time; the helper closes
its connection before it returns, and the job goes on without it.
"""

import json
import socket
import sys
import time

JOB = "mirror0"


class Monitor:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        for _ in range(100):
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.1)
        else:
            sys.exit(f"no QMP monitor at {path}")
        self.stream = self.sock.makefile("rw")
        self.events = []
        self.read()  # the greeting
        self.execute("qmp_capabilities")

    def read(self):
        line = self.stream.readline()
        if not line:
            sys.exit("the QMP monitor closed the connection")
        return json.loads(line)

    def execute(self, command, **arguments):
        self.stream.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
        self.stream.flush()
        while True:
            message = self.read()
            if "error" in message:
                sys.exit(f"{command}: {message['error'].get('desc', message['error'])}")
            if "return" in message:
                return message["return"]
            self.events.append(message)

    def next_event(self, deadline):
        if self.events:
            return self.events.pop(0)
        self.sock.settimeout(max(0.1, deadline - time.time()))
        try:
            return self.read()
        except socket.timeout:
            return None


def start(path, mode):
    monitor = Monitor(path)
    # Granularity 4 KiB, the smallest: with the default (64 KiB for a raw file) every 4 KiB write
    # makes a background mirror copy 64 KiB, and it measured a third slower at 4 KiB random writes.
    monitor.execute("blockdev-mirror", **{"job-id": JOB, "device": "src", "target": "tgt", "sync": "full",
                                          "copy-mode": mode, "granularity": 4096})
    deadline = time.time() + 600
    while time.time() < deadline:
        event = monitor.next_event(deadline)
        if event is None:
            break
        name, data = event.get("event"), event.get("data", {})
        if data.get("device", data.get("id")) not in (JOB, None):
            continue
        if name == "BLOCK_JOB_READY":
            return
        if name in ("BLOCK_JOB_ERROR", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"):
            sys.exit(f"mirror job {name}: {data.get('error', data.get('operation', data))}")
    sys.exit("mirror job never became ready")


def check(path):
    monitor = Monitor(path)
    deadline = time.time() + 300
    while True:
        jobs = [job for job in monitor.execute("query-block-jobs") if job.get("device") == JOB]
        if not jobs:
            sys.exit("the mirror job is gone")
        job = jobs[0]
        # A background mirror behind its source has len > offset; it catches up once writes stop.
        if job.get("offset") == job.get("len") or job.get("status") != "ready" or time.time() > deadline:
            break
        time.sleep(0.1)
    if not job.get("ready") or job.get("status") != "ready" or job.get("io-status", "ok") != "ok":
        sys.exit(f"the mirror job is {job.get('status')}, io-status {job.get('io-status')}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "start":
        start(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    else:
        sys.exit(__doc__)
