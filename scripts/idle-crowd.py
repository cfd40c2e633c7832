#!/usr/bin/python3
"""Holds a crowd of idle and slowloris connections to a server, for the hostile-client test.

    scripts/idle-crowd.py PORT --idle N --slow M --hold SECONDS

Opens N connections that send nothing and M that send one byte every half second, raising its own
open-files limit for them (the test process keeps few descriptors: some of Foundation's process
launching misbehaves past descriptor 1023). Prints "ready" once the server has taken every
connection in (sent its greeting, or closed it to make room), holds them for SECONDS from the
start, then prints how many of the newest 32 idle connections and the slow ones the server had
closed: "closed K of T". Connects only to 127.0.0.1.
"""
import argparse
import resource
import socket
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("port", type=int)
parser.add_argument("--idle", type=int, default=1000)
parser.add_argument("--slow", type=int, default=4)
parser.add_argument("--hold", type=float, default=12)
args = parser.parse_args()

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
wanted = args.idle + args.slow + 64
if soft < wanted:
    if hard != resource.RLIM_INFINITY and hard < wanted:
        sys.exit(f"idle-crowd: the open-files hard limit is {hard}; {wanted} are needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

started = time.monotonic()
crowd = [socket.create_connection(("127.0.0.1", args.port)) for _ in range(args.idle)]
for connection in crowd:
    # The greeting, or the end of a connection closed to make room.
    connection.settimeout(10)
    try:
        connection.recv(18)
    except OSError:
        pass
slow = [socket.create_connection(("127.0.0.1", args.port)) for _ in range(args.slow)]
print("ready", flush=True)
while time.monotonic() - started < args.hold:
    for connection in slow:
        try:
            connection.send(b"\0")
        except OSError:
            pass
    time.sleep(0.5)


def closed(connection):
    connection.settimeout(3)
    try:
        while True:
            data = connection.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except OSError:
        return False


watched = crowd[-32:] + slow
print(f"closed {sum(closed(c) for c in watched)} of {len(watched)}", flush=True)
