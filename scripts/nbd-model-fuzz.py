#!/usr/bin/python3
"""Stateful fuzzing of an NBD server through libnbd, checked against a model of the export's bytes.

    scripts/nbd-model-fuzz.py URI --seconds N [--seed S] [--connections C]

Random sequences of valid and invalid requests go to the server over C connections at once: reads,
writes (with and without FUA), write-zeroes (with NO_HOLE, with FAST_ZERO), trims, flushes, caches;
with lengths of 0, past the end, past the advertised maximum, and with flags the command does not
take (libnbd's strict mode is turned off so that it sends them). Each reply is checked against what
the protocol says (EINVAL, ENOSPC, ENOTSUP) and every read against the model; an invalid request
must leave the data and the connection as they were. At the end the whole export is read back and
compared. Prints one summary line; exits 1 at the first mismatch, naming the seed and the request.

Runs under the system Python (python3-libnbd).
"""
import argparse
import errno
import random
import sys
import time

import nbd


def fail(message):
    print(f"nbd-model-fuzz: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--connections", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    handles = []
    for _ in range(args.connections):
        h = nbd.NBD()
        h.connect_uri(args.uri)
        # Send what the caller asks, invalid or not: the server is what is under test.
        h.set_strict_mode(0)
        handles.append(h)
    size = handles[0].get_size()
    maximum = handles[0].get_block_size(nbd.SIZE_MAXIMUM) or (32 << 20)

    def read_all(h):
        return b"".join(h.pread(min(maximum, size - at), at) for at in range(0, size, maximum))

    model = bytearray(read_all(handles[0]))
    counts = {}

    def note(kind):
        counts[kind] = counts.get(kind, 0) + 1

    def expect_error(what, call, errnos):
        try:
            call()
        except nbd.Error as error:
            if error.errnum not in errnos:
                fail(f"seed {args.seed}: {what}: errno {error.errno} ({error.string}), expected one of {errnos}")
            note("refused")
            return
        fail(f"seed {args.seed}: {what} succeeded, expected an error")

    def extent():
        # Mostly small and aligned, sometimes odd, sometimes large.
        if rng.random() < 0.7:
            length = rng.choice([1, 512, 4096, 8192, 65536])
            offset = rng.randrange(0, size - length + 1)
            if rng.random() < 0.5:
                offset -= offset % 4096
        else:
            length = rng.randrange(1, min(size, 4 << 20))
            offset = rng.randrange(0, size - length + 1)
        return offset, length

    deadline = time.monotonic() + args.seconds
    operations = 0
    while time.monotonic() < deadline:
        h = rng.choice(handles)
        choice = rng.random()
        offset, length = extent()
        operations += 1
        if choice < 0.25:
            data = h.pread(length, offset)
            if data != bytes(model[offset:offset + length]):
                fail(f"seed {args.seed}: read {offset}+{length} differs from the model")
            note("read")
        elif choice < 0.5:
            data = rng.randbytes(length)
            flags = nbd.CMD_FLAG_FUA if rng.random() < 0.3 else 0
            h.pwrite(data, offset, flags)
            model[offset:offset + length] = data
            note("write")
        elif choice < 0.6:
            flags = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0
            h.zero(length, offset, flags)
            model[offset:offset + length] = bytes(length)
            note("zero")
        elif choice < 0.65:
            # Trimmed bytes read as zeros here (the server punches a hole or writes zeros).
            h.trim(length, offset)
            model[offset:offset + length] = bytes(length)
            note("trim")
        elif choice < 0.7:
            h.flush()
            note("flush")
        elif choice < 0.75:
            expect_error("read past the end", lambda: h.pread(length, size - length // 2), {errno.EINVAL})
        elif choice < 0.8:
            expect_error(
                "write past the end", lambda: h.pwrite(b"x" * 16, size - 8), {errno.ENOSPC, errno.EINVAL})
        elif choice < 0.84:
            expect_error("read with DF", lambda: h.pread(512, offset, nbd.CMD_FLAG_DF), {errno.EINVAL})
        elif choice < 0.88:
            expect_error(
                "write-zeroes with FAST_ZERO", lambda: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO),
                {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL})
        elif choice < 0.91:
            expect_error("read over the maximum block size", lambda: h.pread(maximum + 1, 0), {errno.EINVAL})
        elif choice < 0.94:
            expect_error("cache", lambda: h.cache(4096, 0), {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
        else:
            # Zero-length commands succeed and change nothing.
            kind = rng.choice(["write", "zero", "trim", "read"])
            if kind == "write":
                h.pwrite(b"", offset)
            elif kind == "zero":
                h.zero(0, offset)
            elif kind == "trim":
                h.trim(0, offset)
            else:
                h.pread(0, offset)
            note("zero-length")

    for h in handles:
        h.flush()
    final = read_all(handles[-1])
    if final != bytes(model):
        first = next(i for i in range(size) if final[i] != model[i])
        fail(f"seed {args.seed}: the export differs from the model at byte {first} after {operations} requests")
    for h in handles:
        h.shutdown()
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    print(f"nbd-model-fuzz: seed {args.seed}: {operations} requests over {args.connections} connections "
          f"in {args.seconds:.0f} s ({summary}); the export matches the model")


main()
