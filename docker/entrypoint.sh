#!/bin/sh
# Threads from the container's CPU quota, not the host's core count: `docker run --cpus 2` on a 64-core host
# should run 2 BLAS/OpenMP threads, not 64 (oversubscription slows every step). A value set with -e wins.
set -eu
cpus=""
if [ -r /sys/fs/cgroup/cpu.max ]; then                       # cgroup v2: "max 100000" or "200000 100000"
  read -r quota period < /sys/fs/cgroup/cpu.max
  [ "$quota" != "max" ] && cpus=$(( (quota + period - 1) / period ))
elif [ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then        # cgroup v1
  quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
  [ "$quota" -gt 0 ] && cpus=$(( (quota + period - 1) / period ))
fi
[ -n "$cpus" ] || cpus=$(nproc)                              # no quota: the CPUs this container may run on
[ "$cpus" -ge 1 ] || cpus=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$cpus}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-$cpus}"
exec "$@"
