#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: well-formed inputs for each parser to start from.

Run from anywhere; the seeds go to Fuzz/corpus/TARGET/. They are committed, so this only needs
running again when a wire format changes.
"""
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    folder = os.path.join(here, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# NBD: the first byte picks how the stream is cut; then client flags, options, requests.
OPT = 0x49484156454F5054
REQ = 0x25609513


def option(kind, data=b""):
    return struct.pack(">QII", OPT, kind, len(data)) + data


def request(kind, cookie, offset, length, flags=0, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, kind, cookie, offset, length) + payload


go = struct.pack(">I", 4) + b"vol0" + struct.pack(">HH", 1, 0)
session = (
    struct.pack(">I", 3)
    + option(3)  # LIST
    + option(6, go)  # INFO
    + option(7, go)  # GO
    + request(1, 1, 0, 8, flags=1, payload=b"ABCDEFGH")  # WRITE with FUA
    + request(0, 2, 0, 8)  # READ
    + request(6, 3, 4096, 4096)  # WRITE_ZEROES
    + request(4, 4, 0, 4096)  # TRIM
    + request(3, 5, 0, 0)  # FLUSH
    + request(2, 6, 0, 0)  # DISCONNECT
)
for cut in (0, 7, 63):
    write("nbd", f"session-cut-{cut}", bytes([cut]) + session)
write("nbd", "export-name", bytes([5]) + struct.pack(">I", 3) + option(1, b"vol0") + request(0, 1, 0, 512))


# Peer frames: magic TNDP, type, three reserved bytes, body length, body.
def frame(kind, body):
    return struct.pack(">IBBHI", 0x544E4450, kind, 0, 0, len(body)) + body


def peer_string(text):
    data = text.encode()
    return struct.pack(">H", len(data)) + data


hello = frame(1, struct.pack(">H", 3) + peer_string("lab") + peer_string("lab-a") + peer_string("n" * 32))
data = frame(5, struct.pack(">HQQQB", 0, 7, 3, 4096, 1) + b"x" * 64)
ping = frame(10, struct.pack(">Q", 42))
write("peer", "hello-data-ping", bytes([0]) + hello + data + ping)
write("peer", "in-pieces", bytes([3]) + hello + frame(3, b"") + ping + frame(11, struct.pack(">Q", 42)))
tokens = b'{"tokens":[],"version":1}'
write("peer", "token-document", bytes([0]) + frame(15, struct.pack(">BI", 1, len(tokens)) + tokens))


# Membership datagrams for cluster "fuzz": magic TDMB, version, cluster, type, fields.
def short_string(text):
    data = text.encode()
    return bytes([len(data)]) + data


head = b"TDMB" + bytes([4]) + short_string("fuzz")
write("membership", "release", head + bytes([6]) + short_string("a") + struct.pack(">Q", 9) + b"\x01")
write("membership", "mode-request", head + bytes([7]) + short_string("b") + short_string("stop"))
write("membership", "vote-request", head + bytes([4]) + short_string("a") + struct.pack(">QQ", 5, 77) + b"\x00")

# TOML and config: the example and lab configs, and a document of every TOML form.
write(
    "toml",
    "forms",
    b"""# every form the reader knows
title = "x"
[a.b]
n = -12_345
f = 1.5e3
t = true
s = 'literal'
m = \"\"\"multi
line\"\"\"
arr = [1, [2, 3], { k = "v" }]
[[items]]
name = "one"
[[items]]
name = "two"
dotted.key.here = 0x1f
""",
)
example = open(os.path.join(here, "..", "Sources", "TandemCore", "Config", "ConfigTemplate.swift")).read()
start = example.index("# Tandem cluster configuration.")
end = example.index('"""', start)
config = "\n".join(line[8:] if line.startswith("        ") else line for line in example[start:end].split("\n"))
config = config.replace("\\(secretFile)", "/etc/tandem/secret").replace("\\(stateDirectory)", "/var/lib/tandem")
write("config", "example", config.encode())
write("toml", "example", config.encode())
