#!/usr/bin/env bash
# Builds busybox:stable from this machine's static busybox, for machines
# that can't pull images (the example compose in examples/hello uses it).
set -euo pipefail
busybox=$(command -v busybox || true)
for b in /bin/busybox /usr/bin/busybox "$busybox"; do
    if [ -n "$b" ] && [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then
        dir=$(mktemp -d)
        trap 'rm -rf "$dir"' EXIT
        cp "$b" "$dir/busybox"
        printf 'FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nCOPY busybox /bin/wget\nCOPY busybox /bin/httpd\nCOPY busybox /bin/mkdir\nCOPY busybox /bin/echo\n' >"$dir/Dockerfile"
        docker build -q -t busybox:stable "$dir"
        exit 0
    fi
done
echo "no static busybox here (Debian: apt-get install busybox-static)" >&2
exit 1
