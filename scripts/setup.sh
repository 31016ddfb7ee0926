#!/bin/bash
# Installs what ktld and its kernel fixtures need on Debian 12 (run as root); dwarves is
# pahole, for the developer fixture's BTF; ccache for the test of a wrapped compiler; busybox-static for the boot tests' initramfs; e2fsprogs for the ext4 image the modules test mounts.
# redis-server for the shared cache test, distcc (distccd) for the FE-through-distcc test (servers on 127.0.0.1 the tests start).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
  clang-19 lld-19 llvm-19 linux-source-6.12 \
  make gcc libc6-dev flex bison bc libelf-dev libssl-dev perl python3 xz-utils cpio kmod \
  file binutils tmux qemu-system-x86 patch git dwarves ccache busybox-static e2fsprogs redis-server distcc linux-source-6.1
