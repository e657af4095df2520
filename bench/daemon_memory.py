#!/usr/bin/env python3
"""The daemon's memory over time, with and without the metrics endpoint.

Runs `session-sync run` on SQLite for BENCH_SECONDS (default 60) against bench-vendor, with
BENCH_ACCOUNTS accounts (default 10) of BENCH_ROWS rows each (default 100000), polled every
5 s, once with `[metrics] listen` unset (the baseline) and once with it set and scraped every
second; prints peak RSS (VmHWM) and RSS at the end of each, and the ratios to the baseline.
Needs the release binaries: cargo build --release --bin session-sync --example bench-vendor.
"""
import os, subprocess, sys, tempfile, time, urllib.request, re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/session-sync")
VENDOR = os.path.join(ROOT, "target/release/examples/bench-vendor")
SECONDS = int(os.environ.get("BENCH_SECONDS", "60"))
ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "10"))
ROWS = int(os.environ.get("BENCH_ROWS", "100000"))


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run(work, base_url, metrics):
    db = os.path.join(work, f"memory-{'metrics' if metrics else 'plain'}.db")
    config = os.path.join(work, "memory.toml")
    with open(config, "w") as f:
        f.write(f'database_url = "sqlite://{db}"\n[api]\nbase_url = "{base_url}"\n'
                'allow_insecure_http = true\nusername = "bench"\ntoken = "bench"\n'
                '[schedule]\ncron = "*/5 * * * * *"\n')
        if metrics:
            f.write('[metrics]\nlisten = "127.0.0.1:0"\n')
        for c in range(1, ACCOUNTS + 1):
            f.write(f"[[accounts]]\ncustomer_id = {c}\n")
    os.chmod(config, 0o600)
    proc = subprocess.Popen([BIN, "--log-format", "json", "run", "--config", config],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "RUST_LOG": "info"})
    listen, runs = None, 0
    os.set_blocking(proc.stderr.fileno(), False)
    end = time.time() + SECONDS
    while time.time() < end:
        for line in iter(proc.stderr.readline, ""):
            if '"serving metrics at /metrics"' in line:
                listen = re.search(r'"listen":"([^"]+)"', line).group(1)
            if '"run finished"' in line:
                runs += 1
        if listen:
            urllib.request.urlopen(f"http://{listen}/metrics").read()
        time.sleep(1)
    hwm, rss = status_kib(proc.pid, "VmHWM"), status_kib(proc.pid, "VmRSS")
    proc.terminate()
    proc.wait()
    return hwm / 1024, rss / 1024, runs


def main():
    with tempfile.TemporaryDirectory() as work:
        for c in range(1, ACCOUNTS + 1):
            subprocess.run([VENDOR, "generate", "--rows", str(ROWS), "--seed", str(c),
                            "--out", os.path.join(work, f"{c}.csv")], check=True)
        vendor = subprocess.Popen([VENDOR, "serve", "--dir", work], stdout=subprocess.PIPE, text=True)
        base_url = vendor.stdout.readline().split()[-1]
        try:
            plain = run(work, base_url, False)
            with_metrics = run(work, base_url, True)
        finally:
            vendor.terminate()
    print(f"{ACCOUNTS} accounts x {ROWS} rows, polled every 5 s for {SECONDS} s")
    print(f"{'daemon':<34}{'runs':>6}{'peak RSS MiB':>14}{'end RSS MiB':>13}")
    for name, (hwm, rss, runs) in [("metrics off (baseline)", plain), ("metrics on, scraped every 1 s", with_metrics)]:
        print(f"{name:<34}{runs:>6}{hwm:>14.1f}{rss:>13.1f}")
    print(f"ratio peak {with_metrics[0] / plain[0]:.2f}, end {with_metrics[1] / plain[1]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
