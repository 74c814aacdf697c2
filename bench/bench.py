#!/usr/bin/env python3
"""The project's benchmark: venus (over a real vice on loopback) against the local disk, in one run.

Every measure runs on the venus mount and on a local directory of the same machine, and the
report gives both and their ratio. Counters (RPCs, bytes, records) come from `venus status
--json`. Timings are wall clock, median of --repeat runs. Run it through bench/run.
"""

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


class Cell:
    """A vice server and one venus mount, started here and stopped at the end."""

    def __init__(self, bins, root, cache_size="8G"):
        self.bins, self.root = bins, root
        self.data = os.path.join(root, "vice")
        self.mnt = os.path.join(root, "afs")
        self.cache = os.path.join(root, "cache")
        os.makedirs(self.mnt)
        port = 7400 + random.randint(0, 500)
        subprocess.run([f"{bins}/vice", "init", "--cell", "bench.local", "--data", self.data,
                        "--listen", f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL)
        self.vice = subprocess.Popen([f"{bins}/vice", "serve", "--data", self.data],
                                     stderr=open(os.path.join(root, "vice.log"), "w"))
        self.env = dict(os.environ, AFS_CELL_FILE=f"{self.data}/cell.toml",
                        AFS_ADMIN_CRED=f"{self.data}/admin.cred", VENUS_CACHE=self.cache)
        self.wait(lambda: subprocess.run([f"{bins}/vos", "listvldb"], env=self.env,
                                         capture_output=True).returncode == 0)
        self.cache_size = cache_size
        self.venus = None
        self.mount_args = []
        self.mount()

    def wait(self, ok, what="ready", limit=60):
        end = time.time() + limit
        while time.time() < end:
            if ok():
                return
            time.sleep(0.05)
        raise RuntimeError(f"not {what} in {limit} s")

    def mount(self):
        self.venus = subprocess.Popen(
            [f"{self.bins}/venus", "mount", "--cell-file", f"{self.data}/cell.toml", "--cache", self.cache,
             "--cache-size", self.cache_size, "--hoard-dir", os.path.join(self.root, "hoard"),
             *self.mount_args, self.mnt],
            stderr=open(os.path.join(self.root, "venus.log"), "a"))
        self.wait(lambda: self.run_venus("status").returncode == 0, "mounted")
        # root.cell is writable by administrators only; the token survives remounts.
        self.run_venus("login", "admin", "--password-file", f"{self.data}/admin.password")

    def unmount(self):
        self.venus.send_signal(signal.SIGTERM)
        self.venus.wait(timeout=60)

    def run_venus(self, *args):
        return subprocess.run([f"{self.bins}/venus", *args], env=self.env, capture_output=True, text=True)

    def status(self):
        return json.loads(self.run_venus("status", "--json").stdout)

    def counters(self):
        st = self.status()
        c = dict(st["counters"])
        c["rpcs_total"] = sum(st["counters"]["rpcs"].values())
        c["pending_records"] = st["pending_records"]
        return c

    def path(self, rel=""):
        return os.path.join(self.mnt, "bench.local", rel)

    def stop(self):
        try:
            self.unmount()
        except Exception:
            pass
        self.vice.send_signal(signal.SIGTERM)
        self.vice.wait(timeout=60)


def drop_caches():
    try:
        sh("sync; echo 3 > /proc/sys/vm/drop_caches", stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        pass


def make_tree(dst, dirs, files, seed=7):
    """A source tree of small C files with a Makefile, generated from a fixed seed."""
    rng = random.Random(seed)
    os.makedirs(dst)
    objs = []
    for d in range(dirs):
        os.makedirs(f"{dst}/d{d:03}")
    for f in range(files):
        d = f % dirs
        name = f"d{d:03}/f{f:04}.c"
        body = "".join(f"int v{f}_{i} = {rng.randint(0, 1 << 20)};\n" for i in range(rng.randint(5, 40)))
        body += f"int fn{f}(int x) {{ return x * {rng.randint(1, 99)} + v{f}_0; }}\n"
        with open(f"{dst}/{name}", "w") as fh:
            fh.write(body)
        objs.append(name[:-2] + ".o")
    with open(f"{dst}/Makefile", "w") as fh:
        fh.write("OBJS = " + " ".join(objs) + "\nall: $(OBJS)\n%.o: %.c\n\t@gcc -O0 -c $< -o $@\n")


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def andrew(src, target, settle=None):
    """The Andrew-style phases on `target` (which must not exist); seconds per phase. With
    `settle` (what makes the changes durable: `sync` locally, `venus sync` on venus), Copy and
    Remove are also timed until it returns ("Copy, durable")."""
    out = {}
    out["MakeDir"] = timed(lambda: [os.makedirs(os.path.join(target, os.path.relpath(d, src)), exist_ok=True)
                                    for d, _, _ in os.walk(src)])
    out["Copy"] = timed(lambda: [shutil.copyfile(os.path.join(d, f), os.path.join(target, os.path.relpath(d, src), f))
                                 for d, _, fs in os.walk(src) for f in fs])
    if settle:
        out["Copy, durable"] = out["Copy"] + timed(settle)
    out["ScanDir"] = timed(lambda: [os.stat(os.path.join(d, f)) for d, _, fs in os.walk(target) for f in fs])
    out["ReadAll"] = timed(lambda: [open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(target) for f in fs])
    out["Make"] = timed(lambda: sh(f"make -s -j2 -C {target}"))
    out["Remove"] = timed(lambda: shutil.rmtree(target))
    if settle:
        out["Remove, durable"] = out["Remove"] + timed(settle)
    return out


class Floor:
    """The FUSE floor (bench/floor): a file system answering from memory, mounted at `mnt`, so
    each venus ratio can be read against what FUSE's requests alone cost for the same work."""

    def __init__(self, binary, mnt):
        os.makedirs(mnt)
        self.mnt = mnt
        self.proc = subprocess.Popen([binary, mnt], stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"floorfs did not mount at {mnt}")
            time.sleep(0.05)

    def path(self, rel=""):
        return os.path.join(self.mnt, rel)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        subprocess.run(["fusermount3", "-u", self.mnt], stderr=subprocess.DEVNULL)


def median_of(repeat, fn):
    runs = [fn() for _ in range(repeat)]
    keys = runs[0].keys()
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def big_file(cell, local_dir, size_mib, repeat):
    """Throughputs (MB/s) of a large file on both sides, each the median of `repeat` rounds; the
    rounds alternate local and venus, so a slow minute of the machine hits both."""
    src = os.path.join(local_dir, "big.src")
    mb = size_mib * 1.048576
    runs = {"local": [], "venus": []}
    for _ in range(repeat):
        # New random contents each round, made before timing: the server already holding the
        # chunks of an earlier round would send nothing (and zeros would be one chunk stored
        # once); a page-cached source costs both sides the same.
        sh(f"head -c {size_mib}M /dev/urandom > {src}")
        for name, base in [("local", local_dir), ("venus", cell.path())]:
            f = os.path.join(base, "big")
            w = timed(lambda: sh(f"dd if={src} of={f} bs=1M conv=fsync status=none"))
            if name == "venus":
                cell.run_venus("flush", f)
            drop_caches()
            cold = timed(lambda: sh(f"dd if={f} of=/dev/null bs=1M status=none"))
            warm = timed(lambda: sh(f"dd if={f} of=/dev/null bs=1M status=none"))
            os.remove(f)
            runs[name].append({"write+close MB/s": mb / w, "cold read MB/s": mb / cold, "warm read MB/s": mb / warm})
    os.remove(src)
    return {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}


def first_byte(cell, local_dir, size_mib, repeat):
    """Seconds from open to the first 4 KiB of a cold file (not in venus's cache, not in the page
    cache), and to all of it: streamed (the default) against fetched whole before open returns
    (`--stream-threshold 0`, as before streaming), beside the local disk. Medians of `repeat`."""
    src = os.path.join(local_dir, "first.src")
    sh(f"head -c {size_mib}M /dev/urandom > {src}")
    sh(f"cp {src} {cell.path('first')}")
    cell.run_venus("flush", cell.path("first"))

    def cold_open(path):
        drop_caches()
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            f.read(4096)
            first = time.perf_counter() - t0
            while f.read(1 << 20):
                pass
        return {"first 4 KiB s": first, "whole file s": time.perf_counter() - t0}

    def fresh_venus(args):
        cell.unmount()
        shutil.rmtree(cell.cache)
        cell.mount_args = args
        cell.mount()
        return cold_open(cell.path("first"))

    out = {
        "local disk": median_of(repeat, lambda: cold_open(src)),
        "venus, streamed": median_of(repeat, lambda: fresh_venus([])),
        "venus, whole first": median_of(repeat, lambda: fresh_venus(["--stream-threshold", "0"])),
    }
    cell.unmount()
    cell.mount_args = []
    cell.mount()
    os.remove(cell.path("first"))
    os.remove(src)
    return out


def report_first_byte(report, fb, size_mib, repeat):
    report.append(f"\n## Cold {size_mib} MiB file: open to first byte (median of {repeat}; seconds)\n\n"
                  "| read by | first 4 KiB | whole file |\n|---|---:|---:|")
    for k, v in fb.items():
        report.append(f"| {k} | {v['first 4 KiB s']:.4f} | {v['whole file s']:.3f} |")


def delta(cell, size_mib):
    f = cell.path("delta")
    sh(f"dd if=/dev/urandom of={f} bs=1M count={size_mib} status=none")
    cell.run_venus("sync")
    before = cell.counters()["bytes_stored"]
    sh(f"printf x | dd of={f} bs=1 seek={size_mib * 1024 * 512} conv=notrunc status=none")
    cell.run_venus("sync")  # under a write-back permit the store goes within the window
    after = cell.counters()["bytes_stored"]
    os.remove(f)
    return after - before


def postmark(work_dir, files, transactions):
    if not shutil.which("postmark"):
        return None
    cfg = f"set location {work_dir}\nset number {files}\nset transactions {transactions}\nset size 500 10000\nrun\nquit\n"
    return timed(lambda: subprocess.run(["postmark"], input=cfg, text=True, capture_output=True, check=True))


def make_wide_tree(dst, files, per_dir=20, seed=11):
    """A generated source-like tree of `files` small files (0.1-8 KB), `per_dir` to a directory,
    directories two levels deep."""
    rng = random.Random(seed)
    for f in range(files):
        d = f // per_dir
        path = f"{dst}/m{d // 50:02}/p{d % 50:02}"
        if f % per_dir == 0:
            os.makedirs(path)
        with open(f"{path}/f{f:05}.txt", "wb") as fh:
            fh.write(rng.randbytes(rng.randint(100, 8000)))


def local_settle():
    os.sync()


def tar_and_git(cell, local_dir, files):
    """A tar extraction of a `files`-file tree and a `git clone` of a repository of the same tree,
    each into the local disk and into venus, timed until the call returns and until durable; then
    the tree removed. Seconds."""
    src = os.path.join(local_dir, "wide.src")
    make_wide_tree(src, files)
    tarball = os.path.join(local_dir, "wide.tar")
    sh(f"tar cf {tarball} -C {src} .")
    repo = os.path.join(local_dir, "wide.git")
    sh(f"git init -q {src} && git -C {src} add -A && git -C {src} -c user.name=bench -c user.email=b@x "
       f"commit -qm tree && git clone -q --bare {src} {repo}")
    shutil.rmtree(src)
    out = {}
    for name, base, settle in [("local", local_dir, local_settle), ("venus", cell.path(), lambda: cell.run_venus("sync"))]:
        r = {}
        dst = os.path.join(base, "wide")
        os.makedirs(dst)
        r["tar x"] = timed(lambda: sh(f"tar xf {tarball} -C {dst}"))
        r["tar x, durable"] = r["tar x"] + timed(settle)
        r["rm -rf"] = timed(lambda: shutil.rmtree(dst))
        r["rm -rf, durable"] = r["rm -rf"] + timed(settle)
        clone = os.path.join(base, "clone")
        r["git clone"] = timed(lambda: sh(f"git clone -q file://{repo} {clone}"))
        r["git clone, durable"] = r["git clone"] + timed(settle)
        r["git status"] = timed(lambda: sh(f"git -C {clone} status --porcelain >/dev/null"))
        shutil.rmtree(clone)
        settle()
        out[name] = r
    os.remove(tarball)
    shutil.rmtree(repo)
    return out


def second_client_listing(cell, files):
    """This venus extracts a tree under its write-back permit; at once a second client lists it
    with attributes (`ls -lR`): the entries it sees, the time it took (the holder's recall
    included), and the recalls."""
    src = os.path.join(cell.root, "listing.src")
    make_wide_tree(src, files, seed=13)
    sh(f"mkdir {cell.path('listed')} && cp -r {src}/. {cell.path('listed')}")
    shutil.rmtree(src)
    recalls0 = cell.counters().get("permit_recalls", 0)
    other_mnt, other_cache = os.path.join(cell.root, "lister-afs"), os.path.join(cell.root, "lister-cache")
    os.makedirs(other_mnt, exist_ok=True)
    other = subprocess.Popen([f"{cell.bins}/venus", "mount", "--cell-file", f"{cell.data}/cell.toml", "--cache",
                              other_cache, other_mnt], stderr=subprocess.DEVNULL)
    env = dict(cell.env, VENUS_CACHE=other_cache)
    try:
        cell.wait(lambda: subprocess.run([f"{cell.bins}/venus", "status"], env=env,
                                         capture_output=True).returncode == 0, "mounted")
        t0 = time.perf_counter()
        listing = subprocess.run(["ls", "-lR", os.path.join(other_mnt, "bench.local", "listed")],
                                 capture_output=True, text=True, check=True).stdout
        took = time.perf_counter() - t0
    finally:
        other.send_signal(signal.SIGTERM)
        other.wait(timeout=60)
    seen = sum(1 for line in listing.splitlines() if line.startswith("-"))
    shutil.rmtree(cell.path("listed"))
    return seen, took, cell.counters().get("permit_recalls", 0) - recalls0


def revalidation(cell, volumes, per_volume):
    """Files cached from several volumes, one file per volume changed by another client while
    this venus is away; then this venus restarts: the RPCs it needs to trust its cache again."""
    for v in range(volumes):
        name = f"rv{v}"
        subprocess.run([f"{cell.bins}/vos", "create", name], env=cell.env, check=True, stdout=subprocess.DEVNULL)
        cell.run_venus("mkmount", cell.path(name), name)
        for i in range(per_volume):
            with open(os.path.join(cell.path(name), f"f{i}"), "w") as f:
                f.write(f"file {i}\n")
    cell.unmount()
    # Another client changes one file per volume meanwhile.
    other_mnt, other_cache = os.path.join(cell.root, "other-afs"), os.path.join(cell.root, "other-cache")
    os.makedirs(other_mnt, exist_ok=True)
    env = dict(cell.env, VENUS_CACHE=other_cache)
    other = subprocess.Popen([f"{cell.bins}/venus", "mount", "--cell-file", f"{cell.data}/cell.toml", "--cache",
                              other_cache, other_mnt], stderr=subprocess.DEVNULL)
    cell.wait(lambda: subprocess.run([f"{cell.bins}/venus", "status"], env=env,
                                     capture_output=True).returncode == 0, "mounted")
    subprocess.run([f"{cell.bins}/venus", "login", "admin", "--password-file", f"{cell.data}/admin.password"],
                   env=env, check=True, capture_output=True)
    for v in range(volumes):
        with open(os.path.join(other_mnt, "bench.local", f"rv{v}", "f0"), "w") as f:
            f.write("changed elsewhere\n")
    other.send_signal(signal.SIGTERM)
    other.wait(timeout=60)
    t0 = time.perf_counter()
    cell.mount()
    cell.wait(lambda: cell.counters().get("volumes_validated", 0) >= volumes, "revalidated", limit=120)
    took = time.perf_counter() - t0
    rpcs = cell.status()["counters"]["rpcs"]
    return took, {k: v for k, v in rpcs.items() if v}


def replicated(cell, src, files, repeat):
    """Copy (durable) and write+close of small files on a volume replicated on 3 servers (two
    more vice servers join the bench's cell on loopback), against an unreplicated volume of the
    same cell, through the same mount. Seconds, median of `repeat`."""
    extra = []
    for i in range(2):
        data = os.path.join(cell.root, f"vice{i + 2}")
        port = 7950 + random.randint(0, 40) + 50 * i
        subprocess.run([f"{cell.bins}/vice", "init", "--join", f"{cell.data}/cell.toml", "--data", data,
                        "--listen", f"127.0.0.1:{port}", "--admin-cred", f"{cell.data}/admin.cred"],
                       check=True, stdout=subprocess.DEVNULL)
        extra.append(subprocess.Popen([f"{cell.bins}/vice", "serve", "--data", data],
                                      stderr=open(os.path.join(cell.root, f"vice{i + 2}.log"), "w")))
    try:
        vos = lambda *args: subprocess.run([f"{cell.bins}/vos", *args], env=cell.env, check=True,
                                           capture_output=True, text=True)
        cell.wait(lambda: subprocess.run([f"{cell.bins}/vos", "create", "rep", "--replicas", "3"], env=cell.env,
                                         capture_output=True).returncode == 0, "replicated volume created")
        vos("create", "plain")
        rw = os.path.join(cell.mnt, ".bench.local")
        for v in ("rep", "plain"):
            cell.run_venus("mkmount", os.path.join(rw, v), v)
        out = {}
        for v in ("plain", "rep"):
            base = os.path.join(rw, v)
            n = [0]

            def copy():
                n[0] += 1
                shutil.copytree(src, os.path.join(base, f"copy{n[0]}"))
                cell.run_venus("sync")

            def write_close():
                n[0] += 1
                d = os.path.join(base, f"wc{n[0]}")
                os.makedirs(d)
                for i in range(files):
                    with open(os.path.join(d, f"f{i}"), "wb") as fh:
                        fh.write(b"x" * 4096)

            out[v] = {"Copy, durable": statistics.median(timed(copy) for _ in range(repeat)),
                      f"write+close of {files} 4 KiB files": statistics.median(timed(write_close)
                                                                            for _ in range(repeat))}
        return out
    finally:
        for p in extra:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)


def report_replicated(report, r, repeat):
    report.append(f"## A volume replicated on 3 servers against an unreplicated one (median of {repeat}; seconds)\n\n"
                  "Same cell, same mount; the replicated volume's changes commit on a majority before they are "
                  "answered and are written through (no write-back permit).\n\n"
                  "| measure | unreplicated | 3 replicas | ratio |\n|---|---:|---:|---:|")
    for k in r["plain"]:
        p, v = r["plain"][k], r["rep"][k]
        report.append(f"| {k} | {p:.3f} | {v:.3f} | {v / p if p else 0:.2f} × |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition (a smoke run)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the report (markdown) here")
    ap.add_argument("--postmark", action="store_true", help="also run PostMark (slow: minutes)")
    ap.add_argument("--floor", default=None, help="floorfs binary (bench/floor): adds the FUSE floor column")
    ap.add_argument("--replicated-only", action="store_true",
                    help="only Copy and write+close on a 3-replica volume against an unreplicated one")
    ap.add_argument("--first-byte-only", action="store_true",
                    help="only the cold big file's time to first byte (streamed against whole first)")
    a = ap.parse_args()
    dirs, files, big, dmib, repeat = (100, 2000, 512, 1024, a.repeat)
    pm = (2000, 20000)
    if a.quick:
        dirs, files, big, dmib, repeat, pm = (10, 100, 64, 64, 1, (200, 500))
    root = tempfile.mkdtemp(prefix="afs-bench-")
    out = open(a.out, "w") if a.out else None

    class Report(list):
        """Lines printed (and written) as they come, so an interrupted run keeps what it measured."""

        def append(self, line):
            super().append(line)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
                out.flush()

    report = Report()
    cell = Cell(a.bin, root)
    floor = Floor(a.floor, os.path.join(root, "floor")) if a.floor else None
    try:
        if a.first_byte_only:
            local = os.path.join(root, "local")
            os.makedirs(local)
            report_first_byte(report, first_byte(cell, local, big, repeat), big, repeat)
            return
        src = os.path.join(root, "src")
        make_tree(src, dirs, files)
        local = os.path.join(root, "local")
        os.makedirs(local)
        if a.replicated_only:
            report_replicated(report, replicated(cell, src, 200 if a.quick else 1000, repeat), repeat)
            return

        report.append(f"# Benchmark ({time.strftime('%Y-%m-%d')}, {os.uname().nodename}, {os.cpu_count()} cores)\n")
        report.append(f"Tree: {dirs} directories, {files} C files; median of {repeat}; times in seconds.\n")
        report.append("\"FUSE floor\": the same work on bench/floor, a FUSE file system that answers from memory "
                      "and does nothing else (no log, no cache, no server, nothing durable); no FUSE client can do "
                      "it for less.\n")
        report.append("| setup | phase | local disk | FUSE floor | venus | ratio | floor's ratio |\n"
                      "|---|---|---:|---:|---:|---:|---:|")
        rows = []
        loc = median_of(repeat, lambda: andrew(src, os.path.join(local, "t"), local_settle))
        warm = median_of(repeat, lambda: andrew(src, cell.path("t"), lambda: cell.run_venus("sync")))
        fl = median_of(repeat, lambda: andrew(src, floor.path("t"))) if floor else {}
        for k in loc:
            rows.append(("connected, warm", k, loc[k], warm[k]))
        # Cold: the tree is on the server, the cache is empty (a fresh venus).
        sh(f"cp -r {src} {cell.path('cold')}")
        cell.unmount()
        shutil.rmtree(cell.cache)
        cell.mount()
        t0 = cell.counters()
        scan = timed(lambda: [os.stat(os.path.join(d, f)) for d, _, fs in os.walk(cell.path("cold")) for f in fs])
        read = timed(lambda: [open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(cell.path("cold")) for f in fs])
        cold_rpcs = cell.counters()["rpcs_total"] - t0["rpcs_total"]
        rows.append(("connected, cold", "ScanDir", loc["ScanDir"], scan))
        rows.append(("connected, cold", "ReadAll", loc["ReadAll"], read))
        # Disconnected: every phase from the cache, logged; then reintegration.
        cell.run_venus("disconnect")
        off = andrew(src, cell.path("off"))
        for k in off:
            rows.append(("disconnected", k, loc[k], off[k]))
        # The log of an offline Copy, replayed.
        sh(f"mkdir {cell.path('offcopy')}")
        sh(f"cp -r {src}/. {cell.path('offcopy')}")
        records = cell.counters()["pending_records"]
        c0 = cell.counters()
        t0 = time.perf_counter()
        cell.run_venus("reconnect")
        cell.run_venus("sync")
        reint = time.perf_counter() - t0
        c1 = cell.counters()

        for setup, k, l, v in rows:
            # The floor has no cold cache and no server to lose: its row is the warm one's.
            f = fl.get(k.replace(", durable", "")) if setup != "connected, cold" else None
            ft, fr = (f"{f:.3f}", f"{f / l if l else 0:.2f} ×") if f is not None else ("—", "—")
            report.append(f"| {setup} | {k} | {l:.3f} | {ft} | {v:.3f} | {v / l if l else 0:.2f} × | {fr} |")
        report.append(f"\nCold ScanDir+ReadAll made {cold_rpcs} RPCs.\n")
        report.append(f"Reintegration of the offline Copy: {records} records, "
                      f"{c1['bytes_stored'] - c0['bytes_stored']} bytes stored, {reint:.2f} s, "
                      f"{c1['rpcs']['Reintegrate'] - c0['rpcs']['Reintegrate']} Reintegrate RPCs.\n")

        wide = 2000 if a.quick else 20000
        tg_runs = [tar_and_git(cell, local, wide) for _ in range(repeat)]
        tg = {side: {k: statistics.median(r[side][k] for r in tg_runs) for k in tg_runs[0][side]}
              for side in ("local", "venus")}
        report.append(f"## A {wide}-file tree: tar, rm, git (median of {repeat}; seconds)\n\n"
                      "\"durable\": until `sync` (local) or `venus sync` (venus) returns.\n\n"
                      "| measure | local disk | venus | ratio |\n|---|---:|---:|---:|")
        for k in tg["local"]:
            l, v = tg["local"][k], tg["venus"][k]
            report.append(f"| {k} | {l:.3f} | {v:.3f} | {v / l if l else 0:.2f} × |")
        seen, took, recalls = second_client_listing(cell, 200 if a.quick else 2000)
        report.append(f"\nA second client's `ls -lR` of a tree of {200 if a.quick else 2000} files just copied in "
                      f"under the first's permit: saw {seen} files, {took:.2f} s, {recalls} recall(s).\n")

        bf = big_file(cell, local, big, repeat)
        report.append(f"## {big} MiB file (median of {repeat})\n\n| measure | local disk | venus | ratio |\n|---|---:|---:|---:|")
        for k in bf["local"]:
            report.append(f"| {k} | {bf['local'][k]:.0f} | {bf['venus'][k]:.0f} | {bf['venus'][k] / bf['local'][k]:.2f} × |")
        report_first_byte(report, first_byte(cell, local, big, repeat), big, repeat)
        sent = delta(cell, dmib)
        report.append(f"\nOne-byte edit in the middle of a {dmib} MiB file: {sent} bytes sent to the server.\n")
        rv_vols, rv_files = (2, 50) if a.quick else (10, 1000)
        took, rpcs = revalidation(cell, rv_vols, rv_files)
        report.append(f"Revalidation after a restart, {rv_vols * rv_files} cached files in {rv_vols} volumes, one file "
                      f"per volume changed elsewhere meanwhile: {sum(rpcs.values())} RPCs "
                      f"({', '.join(f'{k} {v}' for k, v in sorted(rpcs.items()))}), {took:.2f} s to mount and "
                      f"revalidate.\n")
        report_replicated(report, replicated(cell, src, 200 if a.quick else 1000, repeat), repeat)
        pl = postmark(os.path.join(local), *pm) if a.postmark else None
        pv = postmark(cell.path(), *pm) if a.postmark else None
        pf = postmark(floor.path(), *pm) if a.postmark and floor else None
        if pl is not None and pv is not None:
            at_floor = f", FUSE floor {pf:.1f} s ({pf / pl:.2f} ×)" if pf is not None else ""
            report.append(f"PostMark ({pm[0]} files, {pm[1]} transactions): local {pl:.1f} s, venus {pv:.1f} s, "
                          f"ratio {pv / pl:.2f} ×{at_floor}.\n")
        else:
            report.append("PostMark: not run (--postmark; needs the Debian package postmark).\n")
    finally:
        if floor:
            floor.stop()
        cell.stop()
        shutil.rmtree(root, ignore_errors=True)
    if out:
        out.close()


if __name__ == "__main__":
    sys.exit(main())
