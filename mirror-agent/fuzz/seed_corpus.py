#!/usr/bin/env python3
"""Writes seed corpora for the fuzz targets from the shared capture corpus.

Usage (from mirror-agent/fuzz):  ./seed_corpus.py [PCAP_DIR] [CORPUS_DIR]
Defaults: PCAP_DIR = <repo>/../shared/pcaps, CORPUS_DIR = ./corpus.
Needs tshark. Writes, per TCP connection direction:
  corpus/reassembly/     its segments in the `reassembly` target's record format
  corpus/http_request/   8 zero bytes + its payload, when it starts with a request line
  corpus/http_response/  8 zero bytes + its payload, when it starts with "HTTP/"
and, per capture file, corpus/pcap_pipeline/ the file as it is (its first 256 KiB if larger).
Neither the captures nor what this writes are committed (see .gitignore).
"""

import hashlib
import pathlib
import re
import struct
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
MAX_SEED = 64 * 1024
# libFuzzer sizes its inputs by the largest seed: one multi-megabyte capture would make every
# input that large and every run that slow. A prefix of a capture is still a capture (its last
# record cut short, which the reader must handle anyway).
MAX_PCAP_SEED = 256 * 1024
REQUEST_LINE = re.compile(rb"^[A-Z][A-Z_-]{0,15} ")


def packets(pcap):
    """(direction key, seq, flags, time, payload) for every TCP packet, in capture order."""
    fields = ["tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "tcp.seq_raw", "tcp.flags",
              "frame.time_epoch", "tcp.payload"]
    cmd = ["tshark", "-n", "-r", str(pcap), "-Y", "tcp", "-T", "fields", "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in res.stdout.splitlines():
        cols = line.split("\t")
        if len(cols) < len(fields) or not cols[4]:
            continue
        stream, src4, src6, sport, seq, flags, ts, payload = cols[: len(fields)]
        key = (stream, src4 or src6, sport)
        yield key, int(seq), int(flags, 16), float(ts), bytes.fromhex(payload.replace(":", ""))


def reassembly_seed(segs):
    # Header: max_buffered_bytes, max_segments, gap_timeout (time unit: 1 ms of capture time).
    out = bytearray(struct.pack("<HBH", 16384, 64, 1000))
    prev = segs[0][2]
    for seq, flags, ts, payload in segs:
        dt = min(0xFFFF, max(0, int((ts - prev) * 1000)))
        prev = ts
        payload = payload[:0xFFFF]
        out += struct.pack("<BIHH", flags & 0x1F, seq & 0xFFFFFFFF, dt, len(payload)) + payload
        if len(out) > MAX_SEED:
            break
    return bytes(out)


def main():
    pcap_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "pcaps"
    corpus = pathlib.Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "corpus"
    if not pcap_dir.is_dir():
        sys.exit(f"no capture corpus at {pcap_dir}")
    counts = {"reassembly": 0, "http_request": 0, "http_response": 0, "pcap_pipeline": 0}
    for target in counts:
        (corpus / target).mkdir(parents=True, exist_ok=True)
    for pcap in sorted(p for p in pcap_dir.rglob("*") if p.suffix in (".pcap", ".pcapng")):
        seed = pcap.read_bytes()[:MAX_PCAP_SEED]
        (corpus / "pcap_pipeline" / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        counts["pcap_pipeline"] += 1
        dirs = {}
        for key, seq, flags, ts, payload in packets(pcap):
            dirs.setdefault(key, []).append((seq, flags, ts, payload))
        for segs in dirs.values():
            stream = b"".join(s[3] for s in segs)[:MAX_SEED]
            seeds = [("reassembly", reassembly_seed(segs))]
            if REQUEST_LINE.match(stream):
                seeds.append(("http_request", bytes(8) + stream))
            elif stream.startswith(b"HTTP/"):
                seeds.append(("http_response", bytes(8) + stream))
            for target, seed in seeds:
                name = hashlib.sha1(seed).hexdigest()
                (corpus / target / name).write_bytes(seed)
                counts[target] += 1
    print(" ".join(f"{t}={n}" for t, n in counts.items()), "seeds written to", corpus)


if __name__ == "__main__":
    main()
