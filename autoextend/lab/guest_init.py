"""The guest's ``/init``: a busybox shell script that runs one write/verify job and powers off.

The job comes from the kernel command line (``ae_*`` keys, see :mod:`autoextend.lab.guest`).
The data is a reproducible stream: a block derived from the seed, repeated. Its length is not a
power of two, so every MiB of the device gets different bytes, and a lost, misplaced or
corrupted write changes the read-back digest. The guest writes with O_DIRECT, reads the range
back with O_DIRECT, regenerates the stream to get the expected digest, and prints one
``AUTOEXTEND-GUEST-RESULT key=value ...`` line on the console before ``poweroff -f``.
"""

from __future__ import annotations

MODULES = (
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
)
"""Kernel modules to load, in dependency order (paths under ``lib/modules/<ver>/kernel``)."""

INIT_SCRIPT = r"""#!/bin/sh
# autoextend lab guest init: one write/verify job from /proc/cmdline, then poweroff.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
set -f

MIB=0; RATE_KIB=0; PATTERN=counter; SEED=1; DEV=/dev/vda; OFFSET_MIB=0; MODE=write; EXPECT=
HOLD_S=0
WRITTEN=0; GOT=-; WANT=-; BOOT_CS=0; WRITE_CS=0; VERIFY_CS=0

now_cs() { read -r up _ < /proc/uptime; NOW=$(( ${up%.*} * 100 + 1${up#*.} - 100 )); }
secs() { SECS=$(( $1 / 100 )).$(( $1 % 100 / 10 ))$(( $1 % 10 )); }

finish() {
    secs $BOOT_CS; b=$SECS; secs $WRITE_CS; w=$SECS; secs $VERIFY_CS; v=$SECS
    echo "AUTOEXTEND-GUEST-RESULT mode=$MODE written_mib=$WRITTEN verified=$1" \
        "md5=$GOT expected_md5=$WANT boot_s=$b write_s=$w verify_s=$v error=$2"
    poweroff -f
    sleep 60
}

is_num() { case "$1" in ''|*[!0-9]*) return 1 ;; esac; [ ${#1} -le 12 ]; }

for m in __MODULES__; do
    insmod /lib/modules/$m.ko || finish fail "insmod-$m"
done

read -r CMDLINE < /proc/cmdline
for word in $CMDLINE; do
    case "$word" in
        ae_mib=*) MIB=${word#*=} ;;
        ae_rate_kib=*) RATE_KIB=${word#*=} ;;
        ae_pattern=*) PATTERN=${word#*=} ;;
        ae_seed=*) SEED=${word#*=} ;;
        ae_dev=*) DEV=${word#*=} ;;
        ae_offset_mib=*) OFFSET_MIB=${word#*=} ;;
        ae_mode=*) MODE=${word#*=} ;;
        ae_expect=*) EXPECT=${word#*=} ;;
        ae_hold_s=*) HOLD_S=${word#*=} ;;
    esac
done
for v in MIB RATE_KIB SEED OFFSET_MIB HOLD_S; do
    eval "val=\$$v"
    is_num "$val" || finish fail "bad-$v"
done
case "$PATTERN" in counter|fill) ;; *) finish fail bad-PATTERN ;; esac
case "$MODE" in write|verify) ;; *) MODE=write; finish fail bad-MODE ;; esac
case "$DEV" in /dev/[a-z]*) ;; *) finish fail bad-DEV ;; esac
case "$EXPECT" in *[!0-9a-f]*) finish fail bad-EXPECT ;; esac

i=0
while [ ! -b "$DEV" ]; do
    i=$((i + 1)); [ $i -gt 100 ] && finish fail no-device
    usleep 50000
done

case "$PATTERN" in
    counter) first=$((SEED * 100000)); seq -w $first 1 $((first + 65536)) > /tmp/block ;;
    fill) head -c 1048576 /dev/zero | tr '\000' "\\$(printf %03o $((SEED % 256)))" > /tmp/block ;;
esac
[ -s /tmp/block ] || finish fail pattern
gen() { while cat /tmp/block; do :; done; }

dd_records() {  # $1 = dd stderr file, $2 = "in" or "out"; sets RECORDS (whole blocks)
    RECORDS=0
    while read -r a b c; do
        [ "$b $c" = "records $2" ] && RECORDS=${a%%+*}
    done < "$1"
}

now_cs; BOOT_CS=$NOW
if [ "$MODE" = write ]; then
    echo "AUTOEXTEND-GUEST-START mib=$MIB device=$DEV"
    mkfifo /tmp/stream
    gen > /tmp/stream &
    GEN=$!
    exec 3< /tmp/stream
    if [ "$RATE_KIB" -gt 0 ]; then SEG=1; else SEG=64; fi
    ERR=
    while [ $WRITTEN -lt $MIB ]; do
        n=$((MIB - WRITTEN)); [ $n -gt $SEG ] && n=$SEG
        dd of="$DEV" bs=1M seek=$((OFFSET_MIB + WRITTEN)) count=$n iflag=fullblock \
            oflag=direct conv=notrunc <&3 2>/tmp/dd.err
        rc=$?
        dd_records /tmp/dd.err out
        WRITTEN=$((WRITTEN + RECORDS))
        if [ $rc -ne 0 ] || [ $RECORDS -ne $n ]; then ERR=write-failed; break; fi
        if [ "$RATE_KIB" -gt 0 ]; then
            [ $((WRITTEN % 16)) -eq 0 ] && echo "AUTOEXTEND-GUEST-PROGRESS written_mib=$WRITTEN"
            now_cs
            target=$((BOOT_CS + WRITTEN * 102400 / RATE_KIB))
            [ $NOW -lt $target ] && usleep $(( (target - NOW) * 10000 ))
        else
            echo "AUTOEXTEND-GUEST-PROGRESS written_mib=$WRITTEN"
        fi
    done
    exec 3<&-
    kill $GEN 2>/dev/null
    wait $GEN 2>/dev/null
    dd of="$DEV" if=/dev/null count=0 conv=notrunc,fsync 2>/dev/null || ERR=${ERR:-flush-failed}
    now_cs; WRITE_CS=$((NOW - BOOT_CS))
    [ -n "$ERR" ] && finish fail "$ERR"
    if [ "$HOLD_S" -gt 0 ]; then
        echo "AUTOEXTEND-GUEST-HOLD s=$HOLD_S"
        sleep "$HOLD_S"
    fi
fi

now_cs; start=$NOW
if [ -n "$EXPECT" ]; then
    echo "$EXPECT" > /tmp/want
else
    gen | dd bs=1M count=$MIB iflag=fullblock 2>/dev/null | md5sum > /tmp/want &
    WANT_PID=$!
fi
dd if="$DEV" bs=1M skip=$OFFSET_MIB count=$MIB iflag=direct 2>/tmp/rd.err | md5sum > /tmp/got
[ -n "$EXPECT" ] || wait $WANT_PID
read -r WANT _ < /tmp/want
read -r GOT _ < /tmp/got
dd_records /tmp/rd.err in
now_cs; VERIFY_CS=$((NOW - start))
[ $RECORDS -ne $MIB ] && finish fail read-failed
if [ -n "$GOT" ] && [ "$GOT" = "$WANT" ]; then finish ok -; fi
finish fail mismatch
"""


def render_init() -> str:
    """The init script with the module list filled in."""
    names = " ".join(path.rsplit("/", 1)[1].removesuffix(".ko") for path in MODULES)
    return INIT_SCRIPT.replace("__MODULES__", names)
