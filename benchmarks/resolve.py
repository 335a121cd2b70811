"""Resolver benchmark: prints a table.

1. Cache hit with 10,000 files in the cache: ``resolve(name)`` (one stat) vs a recursive glob
   over the cache (what a naive resolver does). Target: < 1 ms.
2. Bucket download throughput against a local ``rclone serve s3``: ``resolve(name)`` into an
   empty cache (stat + sidecar + stream + sha256 verify + fsync + rename) vs a bare
   ``rclone copyto`` of the same object in the same run, interleaved. Target: >= 0.9x. Also
   shown: ``copyto`` followed by an fsync, i.e. the bare tool made as durable as our download
   (a download that is not on disk when renamed into place is not safe).

    .venv/bin/python benchmarks/resolve.py [--files 10000] [--size-mb 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linnaeus.checkpoint import resolve  # noqa: E402
from linnaeus.checkpoint.sources import rclone_binary  # noqa: E402
from results import record  # noqa: E402

KEY_ID, SECRET = "bench-access-key", "bench-secret-key-123456"



def _copyto(rclone: str, dest: Path) -> None:
    """The bare tool, as a user would run it; its stderr is kept out of the table unless it fails."""
    proc = subprocess.run([rclone, "copyto", "bench:bkt/bench.pth", str(dest)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rclone copyto failed (exit {proc.returncode}):\n{proc.stderr}")

def bench_cache_hit(root: Path, n_files: int, reps: int = 300) -> tuple[float, float]:
    cache = root / "cache"
    for i in range(n_files):  # spread over 100 folders, like a cache that grew over time
        d = cache / f"d{i % 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"ckpt_{i}.pth").write_bytes(b"")
    (cache / "target.pth").write_bytes(b"x")
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        resolve("target.pth", cache_dir=cache, bucket=None)
        times.append(time.perf_counter() - t)
    gtimes = []
    for _ in range(5):
        t = time.perf_counter()
        hits = glob.glob(str(cache / "**" / "target.pth"), recursive=True)
        gtimes.append(time.perf_counter() - t)
        assert hits
    return statistics.median(times) * 1e3, statistics.median(gtimes) * 1e3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, tries: int = 100) -> None:
    """Until something listens on 127.0.0.1:``port`` (a server just started), for up to ``tries`` x 0.25 s."""
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)


def local_s3(root: Path) -> tuple[subprocess.Popen, dict[str, str]]:
    """``rclone serve s3`` over ``root`` (bucket ``bkt`` created) on a free 127.0.0.1 port, listening; and
    the environment that names it as the rclone remote ``bench``. The caller stops the server."""
    port = _free_port()
    (root / "bkt").mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([rclone_binary(), "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}",
                               "--auth-key", f"{KEY_ID},{SECRET}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return server, {"RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Rclone",
                    "RCLONE_CONFIG_BENCH_ENDPOINT": f"http://127.0.0.1:{port}",
                    "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": KEY_ID, "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET}


def bench_download(root: Path, size_mb: int, repeats: int) -> tuple[float, float, float]:
    rclone = rclone_binary()
    data_root = root / "s3"
    (data_root / "bkt").mkdir(parents=True)
    obj = data_root / "bkt" / "bench.pth"
    with open(obj, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    digest = subprocess.run(["sha256sum", str(obj)], capture_output=True, text=True, check=True).stdout.split()[0]
    (data_root / "bkt" / "bench.pth.sha256").write_text(f"{digest}  bench.pth\n")
    port = _free_port()
    server = subprocess.Popen(
        [rclone, "serve", "s3", str(data_root), "--addr", f"127.0.0.1:{port}", "--auth-key", f"{KEY_ID},{SECRET}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        os.environ.update({
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Rclone",
            "RCLONE_CONFIG_BENCH_ENDPOINT": f"http://127.0.0.1:{port}",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": KEY_ID, "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET,
        })
        bucket = {"ENABLED": True, "REMOTE": "bench", "NAME": "bkt", "PATH_PREFIX": ""}
        ours, bare, bare_synced = [], [], []
        for i in range(repeats + 1):  # first round warms the page cache on both sides; not counted
            out = root / f"bare{i}"
            t = time.perf_counter()
            _copyto(rclone, out / "bench.pth")
            bare.append(time.perf_counter() - t)
            shutil.rmtree(out)
            # The same, made as durable as resolve() makes its file: fsync before it counts.
            t = time.perf_counter()
            _copyto(rclone, out / "bench.pth")
            fd = os.open(out / "bench.pth", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            bare_synced.append(time.perf_counter() - t)
            shutil.rmtree(out)
            cache = root / f"cache{i}"
            t = time.perf_counter()
            resolve("bench.pth", cache_dir=cache, bucket=bucket, progress=False)
            ours.append(time.perf_counter() - t)
            shutil.rmtree(cache)
        record("resolve", f"verified bucket download / bare rclone copyto ({size_mb} MiB), throughput",
               [b / o for b, o in zip(bare[1:], ours[1:])], ">= 0.95")
        return statistics.median(ours[1:]), statistics.median(bare[1:]), statistics.median(bare_synced[1:])
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size-mb", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="linnaeus-bench-") as tmp:
        root = Path(tmp)
        hit_ms, glob_ms = bench_cache_hit(root, args.files)
        ours_s, bare_s, synced_s = bench_download(root, args.size_mb, args.repeats)
    mb = args.size_mb * (1 << 20) / 1e6
    rows = [
        ("cache hit, resolve()", f"{hit_ms:.3f} ms", f"{args.files} files", "< 1 ms", "ok" if hit_ms < 1 else "MISS"),
        ("cache hit, recursive glob", f"{glob_ms:.1f} ms", f"{args.files} files", "-", f"{glob_ms / hit_ms:.0f}x slower"),
        ("bucket download, resolve()", f"{mb / ours_s:.0f} MB/s", f"{ours_s:.2f} s", ">= 0.95x bare", f"{bare_s / ours_s:.2f}x"),
        ("bucket download, rclone copyto", f"{mb / bare_s:.0f} MB/s", f"{bare_s:.2f} s", "-", "1.00x"),
        ("  copyto + fsync (same durability)", f"{mb / synced_s:.0f} MB/s", f"{synced_s:.2f} s", "-",
         f"{bare_s / synced_s:.2f}x"),
    ]
    widths = [max(len(str(r[i])) for r in rows + [("what", "result", "detail", "target", "ratio")]) for i in range(5)]
    for row in [("what", "result", "detail", "target", "ratio"), tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(f"\n{args.size_mb} MiB object over loopback, median of {args.repeats} interleaved runs after one warm-up; "
          f"{os.cpu_count()} CPUs.")


if __name__ == "__main__":
    main()
