"""Counts venus's system calls during a connected Remove of 2,000 files (100 directories):

    python3 bench/syscalls.py RELEASE_DIR

(RELEASE_DIR holds `vice` and `venus` release binaries). A fresh one-server cell from
`bench.Cell`; the tree is copied in, then `strace -f -c` is attached to venus around `rm -rf`.
Unlike seconds, the counts are the same run to run, so two builds compare on a noisy machine.
Needs root, fuse3 and strace."""
import os, re, shutil, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench

bins = sys.argv[1]
root = tempfile.mkdtemp(prefix="afs-syscalls-")
src = os.path.join(root, "src")
bench.make_tree(src, 100, 2000)
cell = bench.Cell(bins, os.path.join(root, "cell"))
try:
    target = cell.path("t")
    for d, _, files in os.walk(src):
        os.makedirs(os.path.join(target, os.path.relpath(d, src)), exist_ok=True)
        for f in files:
            shutil.copyfile(os.path.join(d, f), os.path.join(target, os.path.relpath(d, src), f))
    out = os.path.join(root, "strace.txt")
    tracer = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(cell.venus.pid)])
    time.sleep(2)  # attached to every thread
    shutil.rmtree(target)
    tracer.terminate()
    tracer.wait()
    for line in open(out).read().splitlines():
        if re.search(r"\b(pwrite64|pread64|write|fsync|fdatasync|total)$", line):
            print(line)
finally:
    cell.stop()
    shutil.rmtree(root, ignore_errors=True)
