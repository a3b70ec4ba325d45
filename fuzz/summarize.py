"""Prints the numbers docs/fuzzing.md records for each libFuzzer log given (fuzz/work/logs/*.log):
start time (from the log name), executions, exec/s, final coverage (cov = edges of the extension,
ft = features), corpus entries and bytes, new units, peak RSS, and whether it ended in a crash.

Usage: python fuzz/summarize.py fuzz/work/logs/*.log
"""
import re
import sys


def summarize(path: str) -> str:
    with open(path, errors="replace") as f:
        text = f.read()
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.M))
    status = re.findall(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\d+\w+)", text, re.M)
    runs, cov, ft, corp, corp_bytes = status[-1] if status else ("?",) * 5
    crashed = bool(re.search(r"ERROR: (Address|Undefined)Sanitizer|runtime error:|Uncaught Python exception|"
                             r"deadly signal|==ERROR", text))
    return (f"{path}: execs {stats.get('number_of_executed_units', runs)}, "
            f"exec/s {stats.get('average_exec_per_sec', '?')}, cov {cov}, ft {ft}, corpus {corp} inputs "
            f"/ {corp_bytes}, new units {stats.get('new_units_added', '?')}, "
            f"peak RSS {stats.get('peak_rss_mb', '?')} MB, {'CRASH' if crashed else 'no crash'}")


if __name__ == "__main__":
    for log in sys.argv[1:]:
        print(summarize(log))
