"""A/B of two builds on the bench's MakeDir, Copy and Remove phases (2,000 files) and eight
writers creating 250 files each at once, connected and disconnected, a fresh cell per side and round, the rounds interleaved so drift hits both:

    python3 bench/ab.py OLD_RELEASE_DIR NEW_RELEASE_DIR ROUNDS

(each directory holds `vice` and `venus` release binaries, e.g. a worktree's target/release).
Needs root and fuse3, as bench/run does. Besides seconds, each phase reports the CPU time venus
itself used (user + system, from /proc): what the client's own work costs, which the disk's
noise (the server's fsyncs) does not reach."""
import concurrent.futures, os, shutil, sys, tempfile, statistics
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench

old, new, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
root = tempfile.mkdtemp(prefix="afs-ab-")
src = os.path.join(root, "src")
bench.make_tree(src, 100, 2000)
results = {"old": {}, "new": {}}
cpu_results = {"old": {}, "new": {}}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid):
    """User + system seconds a process has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def measured(fn, pid):
    """Seconds, and venus's CPU seconds, of one phase."""
    before = cpu_of(pid)
    t = bench.timed(fn)
    return t, cpu_of(pid) - before


def phases(src, target, pid):
    """The bench's MakeDir, Copy and Remove phases (no Make)."""
    out = {}
    out["MakeDir"] = measured(lambda: [os.makedirs(os.path.join(target, os.path.relpath(d, src)), exist_ok=True)
                                       for d, _, _ in os.walk(src)], pid)
    out["Copy"] = measured(lambda: [shutil.copyfile(os.path.join(d, f), os.path.join(target, os.path.relpath(d, src), f))
                                    for d, _, fs in os.walk(src) for f in fs], pid)
    out["Remove"] = measured(lambda: shutil.rmtree(target), pid)
    # Eight writers at once, 250 new empty files each, each in a directory of its own (the
    # kernel runs one create at a time per directory), all in one volume.
    par = target + "-par"
    for w in range(8):
        os.makedirs(os.path.join(par, f"w{w}"))

    def writer(w):
        for i in range(250):
            os.close(os.open(os.path.join(par, f"w{w}", f"{i}"), os.O_CREAT | os.O_WRONLY, 0o644))

    def parallel():
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(writer, range(8)))

    out["Create×8"] = measured(parallel, pid)
    shutil.rmtree(par)
    return out


for r in range(rounds):
    for side, bins in (("old", old), ("new", new)):
        cell = bench.Cell(bins, os.path.join(root, f"{side}{r}"))
        try:
            for setup in ("connected", "disconnected"):
                if setup == "disconnected":
                    cell.run_venus("disconnect")
                t = phases(src, cell.path(f"t-{setup}"), cell.venus.pid)
                for k in ("Copy", "Remove", "Create×8"):
                    results[side].setdefault((setup, k), []).append(t[k][0])
                    cpu_results[side].setdefault((setup, k), []).append(t[k][1])
            cell.run_venus("reconnect")
        finally:
            cell.stop()
for setup, k in results["old"]:
    o, n = results["old"][(setup, k)], results["new"][(setup, k)]
    print(f"{setup:13} {k:7} old {' '.join(f'{x:.3f}' for x in o)}  new {' '.join(f'{x:.3f}' for x in n)}  "
          f"median ratio {statistics.median(n) / statistics.median(o):.3f}")
print("venus CPU seconds:")
for setup, k in cpu_results["old"]:
    o, n = cpu_results["old"][(setup, k)], cpu_results["new"][(setup, k)]
    print(f"{setup:13} {k:7} old {' '.join(f'{x:.2f}' for x in o)}  new {' '.join(f'{x:.2f}' for x in n)}  "
          f"median ratio {statistics.median(n) / max(statistics.median(o), 1e-9):.3f}")
shutil.rmtree(root, ignore_errors=True)
