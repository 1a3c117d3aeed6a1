# Sourced by the driver tests that stop, kill or starve a run and restart it (stop_run.sh,
# kill_run.sh, disk_full.sh).

# The summary lines of a driver log that say what the run computed (timings and paths left out):
# a restarted run must print exactly these of the uninterrupted run.
summary_key() { grep -E "DNA caught|candidates|needles found|output norm" "$1"; }
