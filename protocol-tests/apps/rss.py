"""The summed resident memory of processes, for the memory benchmarks."""


def rss_kib(pids):
    """VmRSS of each PID in /proc, summed, in KiB."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total
